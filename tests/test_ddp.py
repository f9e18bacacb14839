"""DDP (torchrun) without DistributedDataParallel: 2 gloo processes on the CPU give, step after step, the same
update as one process on the combined batch — for loss weightings, gradient aggregators over every supported
gradient source, and through the real Trainer (sharded loader, loss reduction, FAMO's post-step losses).

All multi-process scenarios run in *one* spawn of 2 processes (module fixture): the interpreter start-up is
the expensive part.  Results are compared in float64 with tight tolerances.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mtl_bench.combiners import COMBINERS
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.data.synthetic import regression_task
from mtl_bench.distributed import NO_DIST, BatchShard, DistContext, cleanup, current, init_distributed, with_global_value
from mtl_bench.engine import GradientEngine
from mtl_bench.errors import ConfigError
from tests.helpers import tiny_batch, tiny_model

TASKS = ("a", "b", "c")
WORLD = 2
BATCH = 8  # global batch; 4 samples per rank
STEPS = 3
# (combiner, kwargs): loss weightings linear / nonlinear in the losses / learnable, and gradient aggregators
# over params (random and nonlinear in G), representation (Gramian path) and last_shared (GradNorm)
ENGINE_CASES = {
    "ew": ("ew", {}),
    "gls": ("gls", {}),
    "uw": ("uw", {"init_log_var": 0.3}),
    "rlw": ("rlw", {"seed": 5}),
    "pcgrad": ("pcgrad", {"seed": 3}),
    "upgrad": ("upgrad", {}),
    "upgrad_batched": ("upgrad", {}, "batched"),  # vmapped encoder pass for G
    "mgda_representation": ("mgda", {"grad_source": "representation"}),
    "upgrad_last_shared": ("upgrad", {"grad_source": "last_shared"}),
    "gradnorm_last_shared": ("gradnorm", {"grad_source": "last_shared", "lr": 0.05}),
}
TRAINER_CASES = ("ew", "pcgrad", "famo")


# ---------------------------------------------------------------------- the runs (same code on 1 or 2 processes)
def global_batches(seed: int = 11):
    return [tiny_batch(n=BATCH, tasks=TASKS, seed=seed + s) for s in range(STEPS)]


def local_part(x, y, ctx: DistContext):
    if not ctx.enabled:
        return x, y
    b = BATCH // ctx.world_size
    sl = slice(ctx.rank * b, (ctx.rank + 1) * b)
    return x[sl], {t: v[sl] for t, v in y.items()}


def engine_run(name: str, kwargs: dict, per_task_backward: str = "sequential", *, ctx: DistContext) -> dict[str, torch.Tensor]:
    """STEPS Adam steps through GradientEngine on this rank's part of each global batch."""
    model = tiny_model(TASKS)
    comb = COMBINERS[name](**kwargs)
    comb.setup(list(TASKS))
    comb.double()
    opt = torch.optim.Adam([*model.parameters(), *comb.parameters()], lr=0.05)
    engine = GradientEngine(model, comb, TASKS, per_task_backward=per_task_backward, dist=ctx)
    weights = []
    for step, (x, y) in enumerate(global_batches()):
        x, y = local_part(x, y, ctx)
        opt.zero_grad(set_to_none=True)
        rep = model.encode(x)
        leaves = engine.leaves(rep)
        out = model.decode(leaves, list(TASKS))
        losses = {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}
        result = engine.backward(losses, step, rep=rep, leaves=leaves)
        weights.append(result.weights.clone())
        opt.step()
        comb.after_step(None)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"combiner.{k}": v.detach().clone() for k, v in comb.state_dict().items() if isinstance(v, torch.Tensor)})
    state["weights"] = torch.stack(weights)
    return state


def make_trainer(name: str, out_dir: Path):
    from mtl_bench.loggers.run_logger import RunLogger
    from mtl_bench.selection import ModelSelector
    from mtl_bench.trainer import Trainer, metric_directions

    tasks = {t: regression_task(t) for t in TASKS}
    x, y = tiny_batch(n=3 * BATCH + 3, tasks=TASKS, seed=21)  # 3 full global batches and a remainder
    xv, yv = tiny_batch(n=6, tasks=TASKS, seed=22)
    splits = {"train": TensorDictDataset(x, y), "val": TensorDictDataset(xv, yv), "test": TensorDictDataset(xv, yv)}
    bench = Benchmark("toy", tasks, splits, (5,))
    model = tiny_model(TASKS)
    comb = COMBINERS[name]()
    comb.setup(list(TASKS))
    comb.double()
    opt = torch.optim.Adam([*model.parameters(), *comb.parameters()], lr=0.05)
    settings = TrainerConf(epochs=2, batch_size=BATCH, device="cpu", log_every_n_steps=1, progress_bar=False, checkpoint_every=0)
    return Trainer(
        model=model, benchmark=bench, tasks=tasks, combiner=comb, optimizer=opt, scheduler=None, settings=settings,
        selector=ModelSelector("last", "val/loss", "auto", 1, metric_directions(tasks)), logger=RunLogger(out_dir, {}),
        output_dir=out_dir, device=torch.device("cpu"), seed=7,
    )


def trainer_run(name: str, out_dir: Path) -> dict[str, torch.Tensor]:
    """Two epochs of Trainer.train_epoch (3 steps each: the remainder batch is dropped) on its own loader."""
    trainer = make_trainer(name, out_dir)
    epoch_losses = []
    for epoch in (1, 2):
        trainer.epoch = epoch
        epoch_losses.append(torch.tensor(list(trainer.train_epoch().values()), dtype=torch.float64))
        trainer.combiner.on_epoch_end(epoch, {})
    state = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    state["epoch_losses"] = torch.stack(epoch_losses)
    state["val_loss"] = torch.tensor(trainer.evaluate("val")["val/loss"], dtype=torch.float64)
    return state


def collectives(ctx: DistContext) -> dict[str, torch.Tensor]:
    """The context's helpers on rank-dependent inputs."""
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(ctx.rank))
    ctx.average_buffers(bn)
    grads = torch.nn.Linear(2, 1)
    for p in grads.parameters():
        p.grad = torch.full_like(p, float(ctx.rank + 1))
    ctx.average_grads(grads.parameters())
    (means,) = ctx.stack_means([torch.tensor(1.0 + ctx.rank, dtype=torch.float64), torch.tensor(float(ctx.rank))])
    return {
        "running_mean": bn.running_mean.clone(), "grad": grads.weight.grad.clone(), "stack_means": means,
        "agree": torch.tensor(ctx.agree(ctx.rank == 1, False)),
        "broadcast": torch.tensor(ctx.broadcast_object(ctx.rank + 10)),
    }


def run_all(ctx: DistContext, out_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    results = {"collectives": collectives(ctx)}
    results.update({f"engine/{case}": engine_run(*ENGINE_CASES[case], ctx=ctx) for case in ENGINE_CASES})
    for name in TRAINER_CASES:
        results[f"trainer/{name}"] = trainer_run(name, out_dir / f"{name}_rank{ctx.rank}")
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed(TrainerConf(device="cpu", batch_size=BATCH))
    try:
        assert ctx.enabled and ctx.backend == "gloo" and current() is ctx
        torch.save(run_all(ctx, Path(out_dir)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    procs = mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="spawn", join=False)
    deadline = time.monotonic() + 240
    while not procs.join(timeout=1):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the 2-process gloo run did not finish in 240 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_results(tmp_path_factory):
    torch.set_num_threads(1)
    return run_all(NO_DIST, tmp_path_factory.mktemp("single"))


def assert_states_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        rtol = 1e-6 if k == "epoch_losses" else 1e-9  # the trainer's logged losses are float32
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=1e-11, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------- the equality tests
@pytest.mark.parametrize("case", [*(f"engine/{c}" for c in ENGINE_CASES), *(f"trainer/{c}" for c in TRAINER_CASES)])
def test_two_gloo_processes_give_the_single_process_update_on_the_combined_batch(case, ddp_results, single_results):
    rank0, rank1 = (r[case] for r in ddp_results)
    for k in rank0:  # the ranks hold bit-identical models (the same reduced values, the same combiner decisions)
        assert torch.equal(rank0[k], rank1[k]), f"{case}: ranks differ in {k}"
    assert_states_close(rank0, single_results[case])


def test_collective_helpers(ddp_results):
    for r in ddp_results:
        got = r["collectives"]
        assert got["running_mean"].tolist() == [0.5, 0.5] and got["grad"].tolist() == [[1.5, 1.5]]
        assert got["stack_means"].dtype == torch.float32 and got["stack_means"].tolist() == [1.5, 0.5]
        assert got["agree"].tolist() == [True, False] and int(got["broadcast"]) == 10


def test_the_comparison_is_not_vacuous(single_results):
    """Training on rank 0's halves without communication gives another model: the equality needs the reductions."""
    model = tiny_model(TASKS)
    comb = COMBINERS["pcgrad"](seed=3)
    comb.setup(list(TASKS))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    engine = GradientEngine(model, comb, TASKS, dist=NO_DIST)
    for step, (x, y) in enumerate(global_batches()):
        x, y = local_part(x, y, DistContext(world_size=WORLD, rank=0))
        opt.zero_grad(set_to_none=True)
        out = model(x)
        engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}, step)
        opt.step()
    full = single_results["engine/pcgrad"]
    assert any(not torch.allclose(v, full[f"model.{k}"]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------- single-process unit tests
def test_without_torchrun_the_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(TrainerConf(batch_size=3))
    assert ctx is NO_DIST and not ctx.enabled and ctx.is_main and current() is NO_DIST
    t = torch.tensor([1.0, 2.0])
    ctx.average_(t)
    assert t.tolist() == [1.0, 2.0] and ctx.agree(True, False) == (True, False)
    ds = TensorDictDataset(torch.zeros(4, 1), {})
    assert ctx.shard_dataset(ds, 3) is ds


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (TrainerConf(device="cpu", batch_size=7), r"trainer.batch_size=7 .*divisible by the world size 2"),
        (TrainerConf(device="cuda:1", batch_size=8), r"trainer.device=cuda:1 would put every rank on one GPU"),
        (TrainerConf(device="mps", batch_size=8), r"trainer.device=mps is not supported under torchrun"),
    ],
)
def test_invalid_distributed_settings_fail_before_joining(monkeypatch, settings, match):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match=match):
        init_distributed(settings)
    assert not torch.distributed.is_initialized() and current() is NO_DIST


def test_sync_bn_needs_cuda(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    settings = TrainerConf(device="cpu", batch_size=8)
    settings.sync_bn = True  # type: ignore[attr-defined]  (trainer.sync_bn, see docs/distributed.md)
    with pytest.raises(ConfigError, match="trainer.sync_bn=true needs CUDA"):
        init_distributed(settings)


@pytest.mark.parametrize("name", ["pcgrad", "graddrop", "nash_mtl", "aligned_mtl"])
def test_representation_source_is_refused_for_aggregators_that_need_the_per_sample_gradients(name):
    comb = COMBINERS[name](grad_source="representation")
    comb.setup(list(TASKS))
    with pytest.raises(ConfigError, match=rf"combiner '{name}' with grad_source=representation is not exact under DDP.*'params'"):
        GradientEngine(tiny_model(TASKS), comb, TASKS, dist=DistContext(world_size=2))
    GradientEngine(tiny_model(TASKS), comb, TASKS, dist=NO_DIST)  # fine on one process


class PerSample(torch.utils.data.Dataset):
    """A dataset without batch indexing: the DataLoader loads samples one by one and collates them."""

    def __len__(self):
        return 13

    def __getitem__(self, i):
        return torch.tensor([float(i)]), {"a": torch.tensor([2.0 * i])}


def test_batch_shard_gives_each_rank_its_contiguous_slice_of_the_global_batch():
    x = torch.arange(10.0).unsqueeze(1)
    ds = TensorDictDataset(x, {"a": x * 2})
    indices = [7, 1, 4, 0, 9, 3]
    parts = [BatchShard(ds, 6, r, 3)[indices] for r in range(3)]
    assert torch.cat([p[0] for p in parts]).flatten().tolist() == [float(i) for i in indices]
    assert torch.equal(parts[1][1]["a"], torch.tensor([[8.0], [0.0]]))
    samples = BatchShard(PerSample(), 6, 2, 3).__getitems__(indices)  # the DataLoader's batched fetch
    assert [float(s[0]) for s in samples] == [9.0, 3.0] and [float(s[1]["a"]) for s in samples] == [18.0, 6.0]
    with pytest.raises(RuntimeError, match="global batches of 6"):
        BatchShard(ds, 6, 0, 3)[[1, 2]]
    with pytest.raises(ConfigError, match="divisible by the world size 4"):
        BatchShard(ds, 6, 0, 4)


@pytest.mark.parametrize("kind", ["batch_indexed", "per_sample"])
def test_the_ranks_loaders_split_the_single_process_batches(kind):
    """Same seed, every epoch: rank 0's and rank 1's batches concatenate to the single-process batch."""
    from mtl_bench.data.base import make_loader

    ds = TensorDictDataset(torch.arange(13.0).unsqueeze(1), {"a": torch.zeros(13, 1)}) if kind == "batch_indexed" else PerSample()

    def loader(view):
        return make_loader(view, 4, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True)

    single = loader(ds)
    ranks = [loader(DistContext(world_size=2, rank=r).shard_dataset(ds, 4)) for r in range(2)]
    for _ in range(3):  # (each loader runs to its end, as in training: exhausting the sampler draws from the generator)
        batches, *rank_batches = list(single), *(list(r) for r in ranks)
        assert len(batches) == 3 and all(len(r) == 3 for r in rank_batches)
        for full, *halves in zip(batches, *rank_batches):
            assert torch.equal(full[0], torch.cat([h[0] for h in halves])) and halves[0][0].shape[0] == 2


def test_with_global_value_routes_the_gradient_to_the_local_losses():
    local = torch.tensor([1.0, 4.0], requires_grad=True)
    mixed = with_global_value(local, torch.tensor([2.0, 3.0]))
    assert mixed.tolist() == [2.0, 3.0]
    (mixed**2).sum().backward()  # d/dlocal of f evaluated at the global value: 2 · global
    assert local.grad.tolist() == [4.0, 6.0]


def test_torchrun_entry_point_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m mtl_bench.train` end to end: rank 0 writes the one summary, whose
    metrics equal a single-process run's on the same global batches (float32 rounding)."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = ["logger=none", "trainer.device=cpu", "trainer.batch_size=64", "trainer.epochs=1", "dataset.n_train=512",
            "dataset.n_val=128", "dataset.n_test=128", "combiner=pcgrad", "trainer.num_threads=1"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                          "-m", "mtl_bench.train", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "mtl_bench.train", *args, f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    b = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert a["distributed"]["world_size"] == 2 and b["distributed"]["world_size"] == 1
    assert a["global_steps"] == b["global_steps"] == 512 // 64
    for key, value in b["final"].items():
        assert a["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # only rank 0 wrote: one metrics file whose step records are not duplicated
    steps = [json.loads(line)["global_step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert len(steps) == len(set(steps))
