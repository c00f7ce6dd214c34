"""ris_model.train.checkpoint and the trainer's resume: weights_only files, exact resume, and refusal of bad files."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas import CheckpointInfo, DataConfig
from ris_model.errors import CheckpointError
from ris_model.train.checkpoint import FORMAT, FORMAT_KEY, load_checkpoint, save_checkpoint
from ris_model.train.sinks import MemorySink
from ris_model.train.trainer import Trainer
from tests.ris_model.conftest import make_model, tiny_config, tiny_phase


def _two_epoch_config():
    # EMA on and a fixed train pool: resume must restore the EMA, the optimizer, and the pool's per-epoch order
    return tiny_config(phases=(tiny_phase(epochs=2, ema_decay=0.8),),
                       data=DataConfig(n_train=64, n_val=32, batch_size=16, fresh_train_each_epoch=False))


def _trainer(config, out: Path, sink: MemorySink | None = None, **kw: Any) -> Trainer:
    return Trainer(config, make_model(config), sink or MemorySink(), "cpu", checkpoint_dir=out, **kw)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        # same ops in the same order on the CPU: bitwise equal
        assert torch.equal(a[name], b[name]), name


class _CopyingSink(MemorySink):
    """Copies `<name>.pt` away when it is reported at (epoch, step), as a crash right after it would leave it."""

    def __init__(self, name: str, epoch: int, dest: Path) -> None:
        super().__init__()
        self.name, self.epoch, self.dest = name, epoch, dest

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        super().log_checkpoint(info)
        if info.name == self.name and info.epoch == self.epoch and not self.dest.exists():
            shutil.copy(info.path, self.dest)


# ---------------------------------------------------------------- format


def test_every_trainer_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    config = tiny_config(phases=(tiny_phase("geom"), tiny_phase("joint", ema_decay=0.9)))
    sink = MemorySink()
    _trainer(config, tmp_path, sink, checkpoint_interval_s=0.0).fit()  # interval 0: a `-last` after every step
    names = {c.name for c in sink.checkpoints}
    assert {"geom-last", "geom", "joint-last", "joint", "final"} <= names
    latest = {c.name: c for c in sink.checkpoints}  # superseded files of a reused name are removed
    for info in latest.values():
        state = torch.load(info.path, weights_only=True)
        assert state[FORMAT_KEY] == FORMAT
        assert state["config_sha256"] == config.sha256()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temp file left behind"


def test_save_checkpoint_reports_size_and_sha_of_file(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "x.pt"
    size, sha = save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    data = path.read_bytes()
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())


def test_save_checkpoint_creates_the_missing_directories_of_its_path(tmp_path: Path) -> None:
    path = tmp_path / "job" / "checkpoints" / "x.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3))


# ---------------------------------------------------------------- exact resume


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The uninterrupted 2-epoch run: its final checkpoint, and a copy of its epoch-1 `joint-last` checkpoint."""
    out = tmp_path_factory.mktemp("reference")
    saved = out / "after-epoch-1.pt"
    _trainer(_two_epoch_config(), out / "full", _CopyingSink("joint-last", 1, saved)).fit()
    return torch.load(out / "full" / "final.pt", weights_only=True), saved


def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(tmp_path: Path, reference_run) -> None:
    config = _two_epoch_config()
    reference, saved = reference_run
    assert torch.load(saved, weights_only=True)["position"]["epoch"] == 1
    result = _trainer(config, tmp_path / "resumed").fit(resume_from=saved)
    resumed = torch.load(result.final_checkpoint.path, weights_only=True)
    _assert_same_weights(resumed["model"], reference["model"])
    _assert_same_weights(resumed["ema"], reference["ema"])
    assert result.global_step == 8


def test_resume_after_mid_epoch_cancel_matches_uninterrupted_run(tmp_path: Path, reference_run) -> None:
    config = _two_epoch_config()
    reference, _ = reference_run
    polls = iter(range(100))

    def stop_after_six_steps() -> str | None:
        return "cancel" if next(polls) >= 6 else None  # polled before each step: 6 steps, then stop

    first = _trainer(config, tmp_path / "run")
    stopped = first.fit(stop_after_six_steps)
    assert stopped.stopped == "cancel" and stopped.final_checkpoint is None
    assert stopped.last_checkpoint is not None and stopped.last_checkpoint.name == "joint-last"
    position = torch.load(stopped.last_checkpoint.path, weights_only=True)["position"]
    assert (position["epoch"], position["batch"], position["global_step"]) == (1, 2, 6)
    result = _trainer(config, tmp_path / "run2").fit(resume_from=Path(stopped.last_checkpoint.path))
    resumed = torch.load(result.final_checkpoint.path, weights_only=True)
    _assert_same_weights(resumed["model"], reference["model"])
    _assert_same_weights(resumed["ema"], reference["ema"])


def test_resume_with_different_config_raises(tmp_path: Path) -> None:
    config = tiny_config()
    first = _trainer(config, tmp_path / "a").fit()
    other = tiny_config(phases=(tiny_phase(lr=5e-4),))
    with pytest.raises(CheckpointError, match="another config"):
        _trainer(other, tmp_path / "b").fit(resume_from=Path(first.last_checkpoint.path))


# ---------------------------------------------------------------- bad files


@pytest.fixture
def good_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(0))},
                           "config": {}, "config_sha256": "0" * 64, "position": {}})
    assert load_checkpoint(path)["model"]["w"].shape == (64, 64)
    return path


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_raises_checkpoint_error(good_checkpoint: Path, fraction: float) -> None:
    data = good_checkpoint.read_bytes()
    good_checkpoint.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="good.pt"):
        load_checkpoint(good_checkpoint)


def test_random_bytes_raise_checkpoint_error(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    escaped = []
    for i in range(64):
        n = int(torch.randint(1, 4096, (1,), generator=gen))
        path = tmp_path / f"random{i}.pt"
        path.write_bytes(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8).numpy().tobytes())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Detected pickle protocol …" from the weights_only unpickler
                load_checkpoint(path)
        except CheckpointError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test: nothing but CheckpointError escapes
            escaped.append(f"file {i}: {type(exc).__name__}: {exc}")
        else:
            escaped.append(f"file {i}: loaded")
    assert escaped == [], escaped


def test_plain_torch_dict_without_marker_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not a ris-jobs checkpoint"):
        load_checkpoint(path)


def test_missing_required_keys_raise_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({FORMAT_KEY: FORMAT, "model": {}}, path)
    with pytest.raises(CheckpointError, match="lacks keys"):
        load_checkpoint(path)


def test_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class _Payload:
    """Unpickling this would create a marker file: code execution on load."""

    marker: Path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_raises_checkpoint_error_without_running_code(tmp_path: Path, writer: str) -> None:
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    state = {FORMAT_KEY: FORMAT, "model": payload, "config": {}, "config_sha256": "", "position": {}}
    path = tmp_path / "evil.pt"
    if writer == "torch_save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not payload.marker.exists(), "the pickled code must not run"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_also_when_the_environment_asks_torch_to_load_unsafely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch lets this variable turn off weights_only where a caller leaves it to torch's default
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({FORMAT_KEY: FORMAT, "model": payload, "config": {}, "config_sha256": "", "position": {}}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not payload.marker.exists(), "the pickled code must not run"


@pytest.mark.parametrize(("content", "cause"), [
    (b"", "EOFError: "),  # torch's error has no text
    (b"not a checkpoint", "UnpicklingError: Weights only load failed"),  # its first sentence only
])
def test_unloadable_checkpoint_error_names_the_file_and_torch_s_error(
    tmp_path: Path, content: bytes, cause: str
) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == ("checkpoint bad.pt cannot be loaded safely: it is truncated, corrupt, or holds objects "
                               f"that weights_only loading refuses ({cause})")


def test_malicious_payload_runs_under_plain_pickle(tmp_path: Path) -> None:
    # control for the test above: the payload is live, so its not running there is the loader's doing
    payload = _Payload()
    payload.marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(payload))  # noqa: S301 - on purpose, in a temp dir
    assert payload.marker.is_dir()


def test_a_reused_checkpoint_name_never_rewrites_a_reported_file(tmp_path: Path) -> None:
    """`<phase>-last` is saved every epoch; each save goes to a new file, and the file a record points at is
    only removed after the new record was reported (a crash in between must not change a listed file)."""
    sink = MemorySink()
    _trainer(tiny_config(phases=(tiny_phase(epochs=3),)), tmp_path, sink).fit()
    lasts = [c for c in sink.checkpoints if c.name == "joint-last"]
    assert len(lasts) == 3
    assert all(a.path != b.path for a, b in zip(lasts, lasts[1:], strict=False)), "each save wrote another file"
    existing = {c.path for c in lasts if Path(c.path).exists()}
    assert existing == {lasts[-1].path}, "superseded files are removed once the new record is reported"
    assert (tmp_path / "final.pt").exists()
