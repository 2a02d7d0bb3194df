"""The streaming pretraining reader: memory independent of the dataset, deterministic, exactly resumable.

The data order is a function of the run seed and ``data.streams`` (S) only, not of the number of GPUs or workers:

* **Streams.** Each epoch of a stream, the shards are permuted (seed, epoch) and stream ``s`` takes every S-th one
  (``order[s::S]``); it reads them in windows of ``data.shuffle_shards`` shards, each window's samples in a seeded
  permutation (seed, stream, epoch, window). A stream's position is ``(epoch, window, offset)``: that is the reader's
  whole state, and a resumed stream re-reads one window and skips ``offset`` samples.
* **Rows.** The global micro-batch has ``micro`` rows; stream ``s`` fills rows ``s*q .. (s+1)*q - 1`` (``q = micro /
  S``), so a rank's rows come from a few streams and each rank reads only those. A rank's streams are split over its
  DataLoader workers.
* **Seeds.** A row's crop and variants are drawn from a generator seeded by (run seed, step, micro-step, row), and the
  4M masking of a stream's ``q`` rows from one seeded by (run seed, step, micro-step, stream): the same rows are
  masked the same way whichever process builds them.

Memory is one window of shards per stream a process reads, whatever the size of the dataset.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fourm import modalities as M
from fourm.data.masking import UnifiedMasking, trim_sequence_padding
from fourm.pretrain.data import absent_value, alphas_spec, collate, dataset_alphas, slice_rows, text_tokenizer
from fourm.distributed import DistEnv
from fourm.pretrain.seeds import step_seed
from fourm.threads import torch_threads
from fourm.tokenizers import layout

STREAMS_PER_GPU = 8  # data.streams: auto gives each of the recipe's GPUs this many streams (a DataLoader worker each)
ROW_STREAM = 11  # the step_seed stream of a row's generator (the loop's own streams are 1..8)


def auto_streams(micro: int, reference_gpus: int = 1) -> int:
    """``data.streams: auto``: 8 streams per GPU of the recipe's hardware (``distributed.reference_gpus``, part of the
    run's identity, unlike the GPUs a job actually gets), as far as they divide the micro-batch."""
    return math.gcd(micro, STREAMS_PER_GPU * max(1, int(reference_gpus)))


def row_seed(seed: int, step: int, micro: int, row: int) -> int:
    return step_seed(step_seed(seed, step, micro, stream=ROW_STREAM), row)


def cat_rows(rows: list[dict]) -> dict:
    """Masked single rows -> one batch (every masked tensor has the modality's full width, so they stack)."""
    out = {}
    for mod in rows[0]:
        out[mod] = {k: torch.cat([r[mod][k] for r in rows]) for k in rows[0][mod]}
    return out


class Stream:
    """The samples of stream ``s`` of ``streams``, from ``state = (epoch, window, offset)`` on, forever."""

    def __init__(self, src: layout.Source, s: int, streams: int, seed: int, window: int, modalities: list[str],
                 state=(0, 0, 0), skip_bad: bool = False, salt: int = 0):
        # salt: the dataset's index in a mixture (each dataset shuffles on its own)
        seed = seed if not salt else step_seed(seed, salt, stream=41)
        self.src, self.s, self.streams, self.seed, self.window = src, s, streams, seed, max(1, int(window))
        self.modalities, self.state, self.skip_bad = modalities, tuple(state), skip_bad
        self.skipped_shards = 0

    def windows(self, epoch: int) -> list[list[str]]:
        n = len(self.src.units)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(self.seed, epoch, stream=21))).tolist()
        mine = [self.src.units[i] for i in order[(self.s % n)::self.streams]]
        return [mine[i:i + self.window] for i in range(0, len(mine), self.window)]

    def __iter__(self):
        epoch, w, offset = self.state
        empty_epochs = 0
        while True:
            wins = self.windows(epoch)
            produced = False
            while w < len(wins):
                raws = []
                for unit in wins[w]:
                    try:
                        for raw in layout.read_unit(self.src, unit, self.modalities):
                            raws.append(raw)
                    except layout.DataError:
                        if not self.skip_bad:
                            raise
                        self.skipped_shards += 1
                g = torch.Generator().manual_seed(step_seed(self.seed, epoch, w, stream=22 + 7 * self.s))
                perm = torch.randperm(len(raws), generator=g).tolist()
                for i in range(offset, len(raws)):
                    produced = True
                    self.state = (epoch, w, i + 1)
                    yield raws[perm[i]]
                w, offset = w + 1, 0
                self.state = (epoch, w, 0)
            epoch, w = epoch + 1, 0
            self.state = (epoch, 0, 0)
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs >= 2:
                raise layout.DataError(f"{self.src.path}: stream {self.s} read no samples in a whole epoch; the data "
                                       "is empty (or every shard of it was skipped as unreadable)")


class _Rows(IterableDataset):
    """Per micro-step, the masked rows of this worker's streams (one item per micro-step, in order)."""

    def __init__(self, reader: "StreamingData", plan: list[list[int]], start_micro: int, states: dict):
        super().__init__()
        self.reader, self.plan, self.start_micro, self.states = reader, plan, start_micro, states

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        if info is None and len(self.plan) > 1:
            raise RuntimeError("several worker plans need DataLoader workers")
        yield from self.reader._produce(self.plan[wid], self.start_micro, self.states)


class StreamingData:
    """Train and validation batches for the pretraining loop, streamed from ``data.train`` / ``data.val``
    (any layout of :mod:`fourm.tokenizers.layout`). Same interface as the in-memory reader, plus
    ``state_dict`` / ``load_state_dict`` (each stream's position, saved with the checkpoints)."""

    def __init__(self, cfg: dict, env: DistEnv, vocab_sizes: dict[str, int] | None = None):
        self.cfg, self.env = cfg, env
        mcfg, data = cfg["model"], cfg["data"]
        self.modalities = list(dict.fromkeys(list(mcfg["domains_in"]) + list(mcfg["domains_out"])))
        tok, bins = text_tokenizer(cfg, self.modalities)
        self.masking = UnifiedMasking(self.modalities, alphas_spec(cfg["alphas"]), cfg["budget"]["num_input_tokens"],
                                      cfg["budget"]["num_target_tokens"], text_tokenizer=tok)
        vocab = vocab_sizes if vocab_sizes is not None else {
            m: M.get(m).vocab_size for m in self.modalities if M.get(m).kind == "image_tokens"}
        self.decode = layout.SampleDecoder(self.modalities, vocab, bins, mcfg.get("image_size"))
        per_step, accum = cfg["batch_size"], cfg["accum_steps"]
        if per_step % (env.world_size * accum):
            raise ValueError(f"batch_size={per_step} must be divisible by world_size*accum_steps={env.world_size * accum}")
        self.accum, self.micro = accum, per_step // accum
        self.local = self.micro // env.world_size
        self.streams, self.skip_bad = reader_settings(cfg)
        self.q = self.micro // self.streams
        self.window = int(data.get("shuffle_shards", 1) or 1)
        self.sources = train_sources(data)  # [(name, Source, weight)]
        # per dataset: the modalities it reads, its decoder and its masking (datasets of a mixture may have fewer
        # modalities than the model, and mixtures of their own)
        self.readers = {name: own or (self.modalities, self.decode, self.masking) for name, own in
                        dataset_readers(cfg, self.modalities, tok, vocab, bins).items()}
        self.shared_masking = all(r[2] is self.masking for r in self.readers.values())
        self.train_src = self.sources[0][1]
        self.weights = torch.tensor([w for _, _, w in self.sources], dtype=torch.float64)
        self.val_src = layout.parse(data["val"]) if data.get("val") else None
        self.seed = int(cfg["seed"])
        r = env.rank
        self.rows = range(r * self.local, (r + 1) * self.local)
        self.my_streams = list(range(self.rows[0] // self.q, (self.rows[-1]) // self.q + 1))
        workers = int(cfg.get("num_workers") or 0)
        n_plans = max(1, min(workers, len(self.my_streams)))
        self.workers = min(workers, len(self.my_streams))
        # contiguous streams per worker: the workers' rows arrive in order and need no reordering in the main process
        k = len(self.my_streams)
        self.plan = [self.my_streams[w * k // n_plans:(w + 1) * k // n_plans] for w in range(n_plans)]
        self.keys = [(s, name) for s in self.my_streams for name, _, _ in self.sources]
        self.state = {k: (0, 0, 0) for k in self.keys}
        self.skipped = 0
        self._iter, self._next = None, None
        self._val_cache = None

    # --- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"streams": self.streams, "next_micro": self._next, "skipped": self.skipped,
                "positions": {f"{s}/{name}": list(self.state[(s, name)]) for s, name in self.keys}}

    def load_state_dict(self, state: dict) -> None:
        if int(state["streams"]) != self.streams:
            raise ValueError(f"the checkpoint's reader has data.streams={state['streams']}, this run {self.streams}; "
                             "resume with the run's own data config")
        pos = {(int(k.partition("/")[0]), k.partition("/")[2]): tuple(v) for k, v in state["positions"].items()}
        missing = [f"{s}/{name}" for s, name in self.keys if (s, name) not in pos]
        if missing:
            raise ValueError(f"the checkpoint's reader state has no position for streams {missing}: it was written "
                             "for other data (data.train / data.mix); resume with the run's own data config")
        self.state = {k: pos[k] for k in self.keys}
        self.skipped = int(state.get("skipped", 0))
        self.close()
        self._next = state.get("next_micro")

    # --- train -----------------------------------------------------------------------------------------------
    def _start(self, m: int) -> None:
        self.close()
        ds = _Rows(self, self.plan, m, dict(self.state))
        if self.workers:
            pin = torch.cuda.is_available()
            loader = DataLoader(ds, batch_size=None, num_workers=self.workers, pin_memory=pin,
                                prefetch_factor=int(self.cfg["data"].get("prefetch", 2) or 2), persistent_workers=False)
        else:
            loader = ds
        self._iter, self._next = iter(loader), m

    def train_batch(self, step: int, micro: int, seed: int | None = None) -> dict:
        m = step * self.accum + micro
        if self._iter is None or self._next != m:
            self._start(m)
        order, parts = [], []
        for _ in self.plan:
            item = next(self._iter)
            if item["m"] != m:
                raise RuntimeError(f"reader out of step: got micro-step {item['m']}, expected {m}")
            self.state.update(item["positions"])
            self.skipped += item["skipped"]
            order += item["rows"]
            parts.append(item["batch"])
        self._next = m + 1
        # joining the workers' parts on one thread: an idle OpenMP team spinning after a parallel copy would take
        # the cores the workers decode on
        with torch_threads(1 if self.workers else None):
            batch = cat_rows(parts) if len(parts) > 1 else parts[0]
            if order != sorted(order):  # rows back in their global order
                perm = torch.tensor(sorted(range(len(order)), key=order.__getitem__))
                batch = {mod: {k: v[perm] for k, v in d.items()} for mod, d in batch.items()}
            return self._trim(batch)

    def _produce(self, streams: list[int], start_micro: int, states: dict):
        iters = {(s, name): Stream(src, s, self.streams, self.seed, self.window, self.readers[name][0],
                                   states[(s, name)], self.skip_bad, salt=i)
                 for s in streams for i, (name, src, _) in enumerate(self.sources)}
        its = {k: iter(st) for k, st in iters.items()}
        names = [name for name, _, _ in self.sources]
        m = start_micro
        while True:
            step, micro = divmod(m, self.accum)
            rows, skipped = [], 0
            for s in streams:
                samples, row_sets = [], []
                for k in range(self.q):
                    j = s * self.q + k
                    name = names[0]
                    if len(names) > 1:  # the row's dataset, drawn by the mixture's weights
                        g = torch.Generator().manual_seed(step_seed(row_seed(self.seed, step, micro, j), 0, stream=31))
                        name = names[int(torch.multinomial(self.weights, 1, generator=g))]
                    mods, decode, _ = self.readers[name]
                    while True:
                        raw = next(its[(s, name)])
                        try:
                            sample = decode(raw, torch.Generator().manual_seed(row_seed(self.seed, step, micro, j)))
                            break
                        except layout.DataError:
                            if not self.skip_bad:
                                raise
                            skipped += 1
                    if mods is not self.modalities:  # what this dataset lacks: present in the row, never a token
                        sample.update({m: absent_value(m, self.decode.image_size) for m in self.modalities
                                       if m not in mods})
                    samples.append(sample)
                    row_sets.append(name)
                # masking seeded by (step, micro-step, stream): whichever process masks the chunk draws the same masks
                masked = self._mask(samples, row_sets, row_seed(self.seed, step, micro, -1 - s))
                mine = [k for k in range(self.q) if s * self.q + k in self.rows]
                if mine:
                    rows.append(([s * self.q + k for k in mine], slice_rows(masked, mine[0], mine[-1] + 1)))
            skipped += sum(st.skipped_shards for st in iters.values())
            for st in iters.values():
                st.skipped_shards = 0
            # one batch per item: a worker's tensors cross to the main process as a few shared-memory blocks
            order = [j for js, _ in rows for j in js]
            yield {"m": m, "rows": order, "batch": cat_rows([b for _, b in rows]), "skipped": skipped,
                   "positions": {k: st.state for k, st in iters.items()}}
            m += 1

    def _mask(self, samples: list[dict], names: list[str], seed: int) -> dict:
        """A stream chunk's rows masked in one call; with datasets of their own masking, each dataset's rows in one
        call of its own (seeded by the chunk's seed and the dataset's place), then put back in row order."""
        if self.shared_masking:
            return self.masking(collate(samples, self.modalities), generator=torch.Generator().manual_seed(seed))
        parts, where = {}, {}
        for i, name in enumerate(self.readers):
            rows = [j for j, n in enumerate(names) if n == name]
            if not rows:
                continue
            g = torch.Generator().manual_seed(step_seed(seed, i, stream=51))
            parts[name] = self.readers[name][2](collate([samples[j] for j in rows], self.modalities), generator=g)
            where.update({j: (name, k) for k, j in enumerate(rows)})
        return cat_rows([slice_rows(parts[where[j][0]], where[j][1], where[j][1] + 1) for j in range(len(samples))])

    def _row(self, raw: layout.RawSample, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        sample = self.decode(raw, g)
        return self.masking(collate([sample], self.modalities), generator=g)

    def close(self) -> None:
        """Stop the DataLoader workers (they also stop when the reader is garbage collected)."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def _trim(self, mod_dict: dict) -> dict:
        mcfg, budget = self.cfg["model"], self.cfg["budget"]
        return trim_sequence_padding(mod_dict, mcfg["domains_in"], mcfg["domains_out"], budget["num_input_tokens"],
                                     budget["num_target_tokens"])

    # --- validation ------------------------------------------------------------------------------------------
    def _val_samples(self) -> list:
        if self._val_cache is None:
            src = self.val_src or self.train_src
            want = self.micro * int(self.cfg["val"]["batches"])
            out = []
            for unit in src.units:
                for raw in layout.read_unit(src, unit, self.modalities):
                    out.append(raw)
                    if len(out) >= want:
                        break
                if len(out) >= want:
                    break
            if not out:
                raise layout.DataError(f"{src.path}: no validation samples")
            self._val_cache = out
        return self._val_cache

    def val_batch(self, i: int, seed: int | None = None) -> dict:
        pool = self._val_samples()
        rows = [self._row(pool[(i * self.micro + j) % len(pool)], row_seed(self.seed, -1 - i, 0, j)) for j in self.rows]
        return self._trim(cat_rows(rows))


def reader_settings(cfg: dict) -> tuple[int, bool]:
    """``(streams, skip bad samples)`` of a run's config; a value the reader cannot take is one ValueError naming it."""
    data = cfg["data"]
    micro = cfg["batch_size"] // max(1, cfg["accum_steps"])
    streams = data.get("streams", "auto")
    gpus = (cfg.get("distributed") or {}).get("reference_gpus", 1)
    try:
        n = auto_streams(micro, gpus) if streams in (None, "auto") else int(streams)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or micro % n:
        raise ValueError(f"data.streams={streams}: must divide the {micro} rows of a micro-batch "
                         f"(batch_size / accum_steps); e.g. data.streams={auto_streams(micro, gpus)}")
    bad = data.get("bad_samples", "error")
    if bad not in ("error", "skip"):
        raise ValueError(f"data.bad_samples={bad!r}: error (stop naming the shard and key) or skip (count them)")
    return n, bad == "skip"


def has_own_settings(dataset) -> bool:
    """Whether a ``data.mix`` entry has modalities or alphas of its own (else it reads the run's)."""
    return isinstance(dataset, dict) and any(dataset.get(k) for k in ("domains_in", "domains_out", "alphas"))


def dataset_readers(cfg: dict, modalities: list[str], text_tok=None, vocab=None, bins=None) -> dict:
    """``{name: (modalities, decoder, masking) or None}`` for the datasets of ``data.mix``: None for a dataset that
    reads the run's modalities with the run's alphas; else what its own ``domains_in`` / ``domains_out`` / ``alphas``
    make. A bad setting is one ValueError naming ``data.mix.<name>``."""
    mcfg, data = cfg["model"], cfg["data"]
    out = {}
    for name, d in (data.get("mix") or {"train": {}}).items():
        if not has_own_settings(d):
            out[str(name)] = None
            continue
        where = f"data.mix.{name}"
        ins, outs = list(d.get("domains_in") or mcfg["domains_in"]), list(d.get("domains_out") or mcfg["domains_out"])
        alphas = dataset_alphas(d.get("alphas") or cfg["alphas"], modalities, ins, outs, where)
        try:
            masking = UnifiedMasking(modalities, alphas, cfg["budget"]["num_input_tokens"],
                                     cfg["budget"]["num_target_tokens"], text_tokenizer=text_tok)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        mods = [m for m in modalities if m in set(ins) | set(outs)]
        out[str(name)] = (mods, layout.SampleDecoder(mods, vocab or {}, bins, mcfg.get("image_size")), masking)
    return out


def train_sources(data: dict) -> list[tuple[str, layout.Source, float]]:
    """``data.train`` (one dataset), or ``data.mix`` (``{name: {train: path, weight: w}}``, datasets mixed row by row
    with those sampling weights, as the official ``weights:``)."""
    mix = data.get("mix")
    if not mix:
        if not data.get("train"):
            raise ValueError("data.train is not set: give the data path of the pretraining data (or data.mix)")
        return [("train", layout.parse(data["train"]), 1.0)]
    out = []
    for name, d in mix.items():
        if not isinstance(d, dict) or not d.get("train"):
            raise ValueError(f"data.mix.{name}: give {{train: <data path>, weight: <sampling weight>}}")
        w = float(d.get("weight", 1.0))
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"data.mix.{name}.weight={d.get('weight')}: a sampling weight is a finite number >= 0")
        out.append((str(name), layout.parse(d["train"]), w))
    if not sum(w for _, _, w in out) > 0:
        raise ValueError(f"data.mix: the weights {[w for _, _, w in out]} sum to 0")
    return out
