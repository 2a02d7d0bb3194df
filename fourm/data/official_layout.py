"""The official 4M dataset layouts as files: data paths parsed, one shard's samples read (local or remote), shards
written. What the files mean (tokens, crops, boxes) is decoded by :mod:`fourm.tokenizers.layout`, which documents the
layouts; the pseudo labellers read and write images and labels through this module.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand

CROP_SETTINGS = "crop_settings"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
OWN_HEADER = "__shard__.json"


class DataError(RuntimeError):
    """Data that cannot be read as the layout says: names the shard (or file), the key and what to do."""


@dataclass(frozen=True)
class Source:
    """A parsed data path: its ``layout`` (``wds`` | ``tar`` | ``folders``) and shards (``units``)."""

    path: str
    layout: str
    folders: tuple[str, ...]  # modality folders (wds, folders); () for single tars
    units: tuple[str, ...]    # wds: the shard name after the brackets; tar: the tar path; folders: the sub-folder
    prefix: str = ""          # wds: the part before the brackets; folders: the root

    def unit_path(self, unit: str, folder: str | None = None) -> str:
        if self.layout == "wds":
            return f"{self.prefix}{folder}{unit}"
        if self.layout == "folders":
            return str(Path(self.prefix) / folder / unit)
        return unit


BRACKETS = re.compile(r"^(?P<prefix>.*)\[(?P<folders>[^\[\]]+)\](?P<rest>.*)$")


def is_shard_path(path: str | os.PathLike) -> bool:
    """A per-modality webdataset data path (``/data/cc12m/[rgb,depth]/shard-{00000..00099}.tar``), not a folder."""
    return BRACKETS.match(str(path)) is not None


def is_remote(path: str) -> bool:
    return path.startswith("pipe:") or "://" in path


def parse(path: str | os.PathLike, check: bool = True) -> Source:
    """The layout of a data path; with ``check``, local shards must exist (one error listing the missing ones)."""
    path = str(path)
    m = BRACKETS.match(path)
    if m:
        folders = tuple(f.strip() for f in m["folders"].split(",") if f.strip())
        units = tuple(braceexpand(m["rest"]))
        src = Source(path, "wds", folders, units, m["prefix"])
        if check:
            _check_exist(path, [src.unit_path(u, f) for u in units for f in folders])
        return src
    if os.path.isdir(path):
        root = Path(path)
        folders = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if not folders:
            raise DataError(f"{path}: a folder without modality folders; the hierarchical layout is "
                            "<root>/<modality>/<folder>/<key>.<ext>")
        tars = {f: sorted(p.name for p in (root / f).iterdir() if p.name.endswith(".tar")) for f in folders}
        if any(tars.values()):  # a folder of per-modality shards: every modality folder holds the same shard names
            names = tars[folders[0]]
            odd = [f for f in folders if tars[f] != names]
            if odd:
                raise DataError(f"{path}: the modality folders hold different shards ({folders[0]}: {len(names)}, "
                                f"{odd[0]}: {len(tars[odd[0]])}); every modality needs the same shard names")
            return Source(path, "wds", folders, tuple(f"/{n}" for n in names), str(root) + "/")
        first = root / folders[0]
        subs = sorted(p.name for p in first.iterdir() if p.is_dir() and not p.name.startswith("."))
        units = tuple(subs) if subs else (".",)
        return Source(path, "folders", folders, units, str(root))
    units = tuple(braceexpand(path))
    if check:
        _check_exist(path, list(units))
    return Source(path, "tar", (), units)


def _check_exist(pattern: str, paths: list[str]) -> None:
    missing = [p for p in paths if not is_remote(p) and not os.path.isfile(p)]
    if not paths:
        raise DataError(f"data path {pattern!r} expands to no shards")
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"shards not found: {missing[:3]}{more}; check the data path {pattern!r}")


def open_shard(path: str):
    """A binary stream of a local or remote shard (webdataset's ``gopen``: pipes, curl, gsutil)."""
    if path.startswith("s3://"):
        path = f"pipe:aws s3 cp {path} -"
    if is_remote(path):
        from webdataset.gopen import gopen

        return gopen(path, "rb")
    return open(path, "rb")


def _tar_groups(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample of a tar, in order (webdataset's key rule: the basename up to its first dot)."""
    try:
        with open_shard(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                data = tar.extractfile(member).read()
                k, _, ext = base.partition(".")
                if base == OWN_HEADER:
                    continue
                if k != key and key is not None:
                    yield key, group
                    group = {}
                key = k
                group[ext] = data
            if key is not None:
                yield key, group
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"shard {path} is truncated or corrupt ({type(e).__name__}: {e}); rewrite it (e.g. rerun "
                        "`fourm-bench tokenize encode`), or pass data.bad_samples=skip to skip what cannot be read") from None


def _folder_for(modality: str, folders: tuple[str, ...]) -> str:
    if modality in folders:
        return modality
    if modality.startswith("rgb@") and "rgb" in folders:
        return "rgb"
    raise DataError(f"no folder for the modality {modality!r} (the data has {list(folders)}); add it to the data "
                    f"path's brackets, or drop it from model.domains_in/out")


@dataclass
class RawSample:
    """One sample's files as stored: ``files[modality] = (ext, bytes)``; ``where`` names its shard for errors."""

    key: str
    where: str
    files: dict[str, tuple[str, bytes]]


def read_unit(src: Source, unit: str, modalities: list[str]) -> Iterator[RawSample]:
    """The samples of one shard with the files of ``modalities`` (plus crop settings when stored)."""
    if src.layout == "tar":
        yield from _read_single_tar(unit, modalities)
        return
    wanted = {m: _folder_for(m, src.folders) for m in modalities}
    if CROP_SETTINGS in src.folders:
        wanted.setdefault(CROP_SETTINGS, CROP_SETTINGS)
    if src.layout == "folders":
        yield from _read_folder_unit(src, unit, wanted)
        return
    paths = {m: src.unit_path(unit, f) for m, f in wanted.items()}
    iters = {m: _tar_groups(p) for m, p in paths.items()}
    first = next(iter(paths))
    while True:
        items = {m: next(it, None) for m, it in iters.items()}
        ended = [m for m, v in items.items() if v is None]
        if len(ended) == len(items):
            return
        if ended:
            have = next(v for v in items.values() if v is not None)[0]
            raise DataError(f"shard {paths[ended[0]]} ended before the sample {have!r} that the other modalities' "
                            f"shards hold: the {ended[0]} shard lacks it; rewrite it, or pass data.bad_samples=skip")
        keys = {m: v[0] for m, v in items.items()}
        if len(set(keys.values())) != 1:
            odd = next(m for m in keys if keys[m] != keys[first])
            raise DataError(f"shard {src.unit_path(unit, '*')}: keys out of alignment: {paths[first]} has "
                            f"{keys[first]!r} where {paths[odd]} has {keys[odd]!r}; the per-modality shards must hold "
                            "the same keys in the same order")
        files = {}
        for m, (key, group) in items.items():
            ext = _pick_ext(group)
            files[m] = (ext, group[ext])
        yield RawSample(keys[first], src.unit_path(unit, "[...]"), files)


def _pick_ext(group: dict[str, bytes]) -> str:
    if len(group) == 1:
        return next(iter(group))
    for ext in ("npy", "json", "txt", *(e[1:] for e in IMAGE_EXTS)):
        if ext in group:
            return ext
    return sorted(group)[0]


def _read_single_tar(path: str, modalities: list[str]) -> Iterator[RawSample]:
    for key, group in _tar_groups(path):
        files = {}
        for ext, data in group.items():
            name, _, suffix = ext.rpartition(".")
            if name == "crops":  # the project's shards: crop boxes and the image size as JSON
                files[CROP_SETTINGS] = ("crops.json", data)
            elif name:
                files[name] = (suffix, data)
        yield RawSample(key, path, {m: files[m] for m in [*modalities, CROP_SETTINGS] if m in files})


def _read_folder_unit(src: Source, unit: str, wanted: dict[str, str]) -> Iterator[RawSample]:
    listing = {}
    for m, folder in wanted.items():
        d = Path(src.prefix) / folder / unit
        if not d.is_dir():
            raise DataError(f"{d}: missing (the modality {m!r} has no folder {unit!r}); every modality folder "
                            "needs the same sub-folders")
        listing[m] = {p.name.partition(".")[0]: p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    first = next(iter(wanted))
    for key in sorted(listing[first]):
        files = {}
        for m in wanted:
            p = listing[m].get(key)
            if p is None:
                files[m] = None
                continue
            files[m] = (p.name.partition(".")[2], p.read_bytes())
        yield RawSample(key, str(Path(src.prefix) / "*" / unit), files)


LAYOUTS = ("wds", "folders", "fourm")


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical content
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_sample_files(out_root: str | os.PathLike, layout: str, name: str,
                       samples: list[tuple[str, dict[str, tuple[str, bytes]]]]) -> int:
    """Write one shard of ``samples`` (``(key, {folder: (ext, bytes)})``) in ``layout`` under ``out_root``:
    ``<folder>/<name>.tar`` per modality (wds) or ``<folder>/<name>/<key>.<ext>`` (folders); each file or folder
    whole or not at all (temp + ``os.replace``). Returns the bytes written."""
    out_root = Path(out_root)
    folders = sorted({f for _, files in samples for f in files})
    total = 0
    for folder in folders:
        (out_root / folder).mkdir(parents=True, exist_ok=True)
        if layout == "wds":
            final = out_root / folder / f"{name}.tar"
            tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for key, files in samples:
                    if folder in files:
                        ext, data = files[folder]
                        add_member(tar, f"{key}.{ext}", data)
            os.replace(tmp, final)
            total += final.stat().st_size
        elif layout == "folders":
            final = out_root / folder / name
            tmp = out_root / folder / f".{name}.{os.getpid()}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            for key, files in samples:
                if folder in files:
                    ext, data = files[folder]
                    (tmp / f"{key}.{ext}").write_bytes(data)
                    total += len(data)
            if final.exists():
                import shutil

                shutil.rmtree(final)
            os.replace(tmp, final)
        else:
            raise ValueError(f"layout={layout!r}: write one of {LAYOUTS[:2]}")
    return total


def shard_complete(out_root: str | os.PathLike, layout: str, name: str, folders: list[str]) -> bool:
    out_root = Path(out_root)
    if layout == "wds":
        return all((out_root / f / f"{name}.tar").is_file() for f in folders)
    return all((out_root / f / name).is_dir() for f in folders)


def data_path(out_root: str | os.PathLike, layout: str, folders: list[str], shards: int) -> str:
    """The data path that reads back what :func:`write_sample_files` wrote."""
    root = Path(out_root).resolve()
    if layout == "folders":
        return str(root)
    last = shard_name(shards - 1)[len("shard-"):]
    return f"{root}/[{','.join(folders)}]/shard-{{{'0' * len(last)}..{last}}}.tar"
