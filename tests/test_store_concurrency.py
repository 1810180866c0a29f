"""Two cold `zsclip classify` processes on one cache: both must report on the one complete store.

The second process starts its run while the first is half-way through building the store (it waits for the
first one's first shard file), as when a user starts a second run a few seconds after the first. Each child
runs the real CLI entry point; the only changes are a small shard size and a slowed encoder, so that the
build spans many shards and the race window is seconds wide instead of milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fixtures_data import make_cub_folder

from zsclip.stores import ImageStore

_CHILD = r"""
import sys, time
from pathlib import Path
import zsclip.cli, zsclip.stores as stores
home, wait_for_shard, argv = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
build = stores.ImageStore.build.__func__
build.__kwdefaults__["shard_size"] = 2
real_encode = stores._encode_samples
def slow_encode(*args, **kwargs):
    time.sleep(0.4)
    return real_encode(*args, **kwargs)
stores._encode_samples = slow_encode
def build_once_the_other_has_started(cls, *args, **kwargs):
    deadline = time.time() + 60
    while not list(home.glob("stores/*/build/shard_*.npz")) and time.time() < deadline:
        time.sleep(0.02)
    return build(cls, *args, **kwargs)
if wait_for_shard:  # this process's build starts while the other process is building
    stores.ImageStore.build = classmethod(build_once_the_other_has_started)
sys.argv = ["zsclip", *argv]
zsclip.cli.main()
"""


def test_two_cold_classify_runs_share_one_complete_store(tmp_path, tiny_model):
    root = make_cub_folder(tmp_path / "data", n_classes=5, images_per_class=6)
    home = tmp_path / "home"
    env = {**os.environ, "ZSCLIP_HOME": str(home), "ZSCLIP_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    procs = []
    for name, wait in (("a", "0"), ("b", "1")):
        args = ["classify", "-d", "cub", "--dataset-root", str(root), "--model",
                f"local-dir:{tiny_model['local_dir']}", "--device", "cpu", "--workers", "1",
                "-o", str(tmp_path / f"{name}.json")]
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(home), wait, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    readable = 14  # 15 test images, one of them corrupt
    assert a["counts"]["images"] == b["counts"]["images"] == readable
    assert a["metrics"] == b["metrics"]
    assert a["counts"]["images_encoded"]["test"] + b["counts"]["images_encoded"]["test"] == readable  # once, not twice
    assert a["results"]["store"] == b["results"]["store"]
    store = ImageStore.open(a["results"]["store"])
    assert len(store) == readable and store.embeddings.shape[0] == readable
    assert not (Path(a["results"]["store"]) / "build").exists()
