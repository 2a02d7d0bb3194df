"""`fourm-bench label` as a job array: one task per range of images, a failed task run again alone, the same tasks
on the real SLURM cluster as one array."""
from __future__ import annotations

import json
import shutil

import pytest

from fourm.cli import main
from fourm.data import world


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("arrays")
    world.generate(str(root), num=6, size=32, seed=0, split="train")
    return root / "train"


def test_a_failed_task_is_run_again_alone(images, tmp_path, capsys):
    split = tmp_path / "train"
    shutil.copytree(images / "rgb", split / "rgb")
    (split / "rgb" / "000005.png").write_bytes(b"\x89PNG broken")  # in the second of two ranges
    cmd = ["label", "--in", str(split), "--labeler", "canny_edge", "--parts", "2", "--work", str(tmp_path / "w"),
           "--on-bad-image", "stop"]
    assert main([*cmd, "--dry-run", "--gpus", "1", "--timeout-min", "30"]) == 0
    out = capsys.readouterr().out
    assert "label canny_edge [array of 2]" in out and "GPU-hours: at most 1 reserved by 2 other jobs" in out
    assert not (tmp_path / "w").exists()
    assert main(cmd) == 1
    assert "1 tasks did not finish (label canny_edge [2/2])" in capsys.readouterr().err
    assert sorted(p.name for p in (split / "canny_edge").glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    first = (split / "canny_edge" / "000000.png").stat().st_mtime_ns
    (split / "rgb" / "000005.png").unlink()
    assert main(cmd) == 0
    assert "every task DONE (1 run now)" in capsys.readouterr().out
    assert len(list((split / "canny_edge").glob("*.png"))) == 5
    assert (split / "canny_edge" / "000000.png").stat().st_mtime_ns == first
    # errors a task would hit are refused before any job: an option the labeller does not take, a missing checkpoint
    assert main([*cmd, "--score-threshold", "0.3"]) == 2
    assert "--score-threshold does not apply to canny_edge" in capsys.readouterr().err
    assert main(["label", "--in", str(split), "--labeler", "dpt_depth", "--checkpoint", str(tmp_path / "no.safetensors"),
                 "--parts", "2", "--work", str(tmp_path / "w2")]) == 2
    assert "no.safetensors: no such file" in capsys.readouterr().err and not (tmp_path / "w2").exists()
    # weights of another architecture: named from the file's header alone, before any job
    import torch
    from safetensors.torch import save_file

    save_file({"model.blocks.0.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert main(["label", "--in", str(split), "--labeler", "dpt_depth", "--checkpoint", str(tmp_path / "other.safetensors"),
                 "--parts", "2", "--work", str(tmp_path / "w2")]) == 2
    err = capsys.readouterr().err
    assert "not the weights of Omnidata DPT-Hybrid depth: 368 missing" in err and "1 unexpected (blocks.0.weight)" in err
    (tmp_path / "m2f").mkdir()
    assert main(["label", "--in", str(split), "--labeler", "mask2former_semseg", "--checkpoint", str(tmp_path / "m2f"),
                 "--parts", "2", "--work", str(tmp_path / "w2")]) == 2
    assert "a transformers model folder" in capsys.readouterr().err and not (tmp_path / "w2").exists()


@pytest.mark.slurm
def test_label_tasks_run_as_one_slurm_array(images, slurm_cluster, job_dir, capsys):
    split = job_dir / "train"
    shutil.copytree(images / "rgb", split / "rgb")
    assert main(["label", "--in", str(split), "--labeler", "canny_edge", "--parts", "3", "--launcher", "slurm",
                 "--wait", "--mem-gb", "0.5", "--timeout-min", "20", "--work", str(job_dir / "w")]) == 0
    manifest = json.loads((job_dir / "w" / "label-slurm" / "manifest.json").read_text())["runs"]
    jobs = sorted(e["jobs"][-1]["job_id"] for e in manifest.values())
    assert len(jobs) == 3 and len({j.split("_")[0] for j in jobs}) == 1  # <array id>_<task>
    assert len(list((split / "canny_edge").glob("*.png"))) == 6
    records = [json.loads(line) for line in (split / "canny_edge" / ".label_log.jsonl").read_text().splitlines()]
    assert sorted(r["part"] for r in records) == [[0, 3], [1, 3], [2, 3]] and sum(r["labelled"] for r in records) == 6


def test_rgb_shards_label_as_an_array_over_shard_ranges(images, tmp_path, capsys):
    from fourm.data import official_layout as ol

    stems = sorted(p.stem for p in (images / "rgb").glob("*.png"))
    for i in range(3):  # 3 shards of 2 images
        ol.write_sample_files(tmp_path / "data", "wds", ol.shard_name(i),
                              [(s, {"rgb": ("png", (images / "rgb" / f"{s}.png").read_bytes())})
                               for s in stems[2 * i:2 * i + 2]])
    path = f"{tmp_path / 'data'}/[rgb]/shard-{{00000..00002}}.tar"
    cmd = ["label", "--in", path, "--labeler", "canny_edge", "--parts", "2", "--work", str(tmp_path / "w")]
    assert main([*cmd, "--dry-run", "--gpus", "1", "--gpu-s-per-image", "1800"]) == 0
    # the estimate takes every shard to hold the first one's 2 images: 3 shards x 2 x 1800 s = 3 GPU-hours
    assert "GPU-hours: 3.0 estimated for 2 jobs" in capsys.readouterr().out
    assert main(cmd) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "canny_edge").glob("*.tar")) == \
        [f"{ol.shard_name(i)}.tar" for i in range(3)]
    src = ol.parse(f"{tmp_path / 'data'}/[rgb,canny_edge]/shard-{{00000..00002}}.tar")
    assert [s.key for u in src.units for s in ol.read_unit(src, u, ["rgb", "canny_edge"])] == stems
