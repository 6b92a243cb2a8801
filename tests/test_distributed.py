"""Data-parallel training with torchrun (gloo on CPU), the sharded batch sampler, and several jobs
working through one experiment plan (folds spread over GPUs) without running a fold twice or losing one."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import ROOT
from dataset import ChunkBatchSampler
from main import main
from test_train import TINY

ONE_EPOCH = [a if a != "2" else "1" for a in TINY]


def test_sharded_sampler_covers_every_batch_with_equal_steps():
    single = list(ChunkBatchSampler(203, 16, chunk=4, shuffle=True, seed=3))
    shards = [list(ChunkBatchSampler(203, 16, chunk=4, shuffle=True, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ChunkBatchSampler(203, 16, 4, True, 3, 3, 0))
    covered = {w for shard in shards for batch in shard for w in batch}
    assert covered == set(range(203))
    # The same shuffled batches as one process, dealt out in turn (the last one repeated for equal steps).
    assert [shards[k % 3][k // 3] for k in range(len(single))] == single


def test_torchrun_two_processes_then_test_only_gives_the_same_figures(demo_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "main.py"), "--data_dir", str(demo_dir), "--save_path", str(tmp_path), "--device", "cpu"] + TINY,
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(tmp_path.glob("lstm_*"))
    assert len(runs) == 1  # rank 0 alone made the run folder and wrote its files
    assert result.stdout.count("results:") == 1  # and alone reported
    written = json.loads((runs[0] / "results.json").read_text())["test"]
    assert [r["epoch"] for r in map(json.loads, (runs[0] / "log.jsonl").read_text().splitlines())] == [1, 2]
    main(["--test_only", str(runs[0])])
    again = json.loads((runs[0] / "results_test_only.json").read_text())["test"]
    for name in ("instance_f1", "macro_f1", "ccc_arousal", "ccc_valence"):
        assert again[name] == written[name], name


def test_jobs_share_one_plan_and_take_over_a_dead_jobs_run(demo_dir, tmp_path):
    main(["--cv", "--cv_folds", "1,2;3,4;5,6;7,8", "--plan_only", "--data_dir", str(demo_dir), "--save_path",
          str(tmp_path)] + ONE_EPOCH)
    folder = next(tmp_path.glob("cv_*"))
    assert not list(folder.glob("fold*"))  # planned, nothing trained
    # A plan written by an earlier version lacks flags added since: resuming it gives them their defaults.
    plan = json.loads((folder / "runs.json").read_text())
    del plan["args"]["av_calibration"]
    (folder / "runs.json").write_text(json.dumps(plan))
    # fold4 was claimed by a job that has since died on this host: its claim is stale.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / ".claims").mkdir()
    (folder / ".claims" / "fold4").write_text(f"{socket.gethostname()} {dead.pid}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--resume", str(folder), "--device", "cpu"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            for _ in range(2)]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    for fold in range(1, 5):
        trained = sum(out.count(f"=== run {fold}/4: fold{fold},") for out in outputs)
        assert trained == 1, (fold, outputs)  # each fold by exactly one job, none lost
        assert (folder / f"fold{fold}" / "results.json").exists()
    assert not list(folder.glob("*_interrupted_*"))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_runs"] == 4 and np.isfinite(summary["mean"]["macro_f1"])
