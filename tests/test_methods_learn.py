"""Every method, trained briefly on CPU, learns: finite and falling loss, no collapse, kNN above random init.

The test-bed is the generated ``shapes`` set (5k train, of which 500 are the validation split, and 5k test
images, 32 px) with a small CNN of width 8, AdamW 3e-3 and strong colour augmentation (hue 0.5, grayscale 0.5):
the defaults of suites/quickstart.yaml at a quarter of the backbone's cost. The 5k test images keep the
binomial noise of the kNN accuracy small (2 sd: 1.2 points at 25 %). Only what the test reads is computed: kNN
with k=20 (test split), the collapse diagnostics; no probe, no online monitor, one checkpoint at the end.

Each method has a budget (epochs, batch size, crops, heads, the few hyper-parameters that matter in short runs)
and a margin over the kNN accuracy of the same backbone at its random initialisation for the test's own seed
(0), computed once per module. Beside each budget are the kNN accuracies measured with it (lowest, median,
highest) and the CPU seconds (user + sys) of its run; ``test_each_margin_holds_with_slack_in_the_measured_runs``
checks that every margin stays below the lowest measured kNN less the highest random-init kNN over seeds and two
binomial sd.

How measured (2026-12-06/07): seeds 0, 1 and 2 with one torch thread and seed 0 with two threads, on the
project's shared 2-core x86 CPU machine under the load of other jobs (CPU seconds do not depend on that load,
wall time does: 1-3x the CPU time there; the two-thread runs with ``OMP_WAIT_POLICY=PASSIVE``, as spinning
threads cost up to 7x the CPU time on a loaded machine); the random-init kNN over seeds 0-7. A budget whose
record has fewer runs says so. The module costs about 450 CPU seconds (one thread), the sum of ``cpu_s``.

Seeds 1 and 2 change the initialisation, the data order and the views. A machine of this kind changes none of
them (torch's CPU generator draws the same numbers everywhere): only the order of floating-point sums differs,
with the thread count and the CPU's vector unit, and that difference grows through training like a change of
seed, but from the same start. Seed 1's width-8 initialisation learns markedly worse for several methods (lowest
kNN over the seeds, seed 0's lowest in brackets): Barlow Twins 0.20 (0.25), CorInfoMax 0.21 (0.29), MoCo v2 0.18
(0.25), SimSiam 0.14 (0.24), W-MSE 0.22 (0.26). For these budgets (``INIT_SENSITIVE``) the margin holds over
the seed-0 runs (one and two threads) only; holding it for every seed takes a wider backbone or a longer budget.

- SimCLR, VICReg, Barlow Twins, MVEB, CorInfoMax and the supervised baseline learn with the quickstart's
  crops (scale 0.2-1) at batch 128.
- The others learn much faster with crops of at least half the image, so both views keep the shape, and
  batch 64 or 32 (more steps for the same CPU time): with scale 0.2-1 SwAV's codes collapse to uniform in
  its first 20 steps and MoCo v2, DINO, W-MSE and MV-MR stay at or below random init after 10 epochs.
- DINO and W-MSE learn with a single linear layer as head (DINO: before the normalised last layer).
  Behind an MLP head the backbone stays poor: DINO's normalised head outputs barely vary across images
  (per-dimension spread 0.02-0.05), so its centred teacher is nearly uniform and the loss sits at ln K;
  W-MSE's MLP makes the 32-64 whitened directions out of 5-8 backbone directions (kNN at or below random
  init). A linear head can only pass on what the backbone carries. DINO also needs a sharper teacher
  (temperature 0.02) at this scale. Its loss is the cross-entropy to a centred, sharpened teacher
  whose targets spread out as the backbone learns: it may end above its first epoch's (seed 1: 3.87 -> 4.18
  while kNN rose to 0.26), so DINO's test does not require a falling loss; its kNN margin shows the learning.
- MV-MR uses ``mse_reduction=mean``: the paper's summed invariance term outweighs the variance and
  distance-correlation terms in short runs and the backbone loses rank (13 % kNN after 10 epochs).
- MoCo v2 uses the symmetric loss (both crops as queries, solo-learn's MoCo v2+) with a short queue: the
  paper's one-sided loss with a 4096-key queue stays near random init after 10 epochs and its loss rises
  as the queue fills with real keys. A faster key encoder (momentum 0.9) does not learn (kNN 0.15).
- BYOL and SimSiam learn slowest of the Siamese methods (BYOL: 0.22 after 8 epochs at batch 32, with lr 3e-3
  or 6e-3 and tau 0.9 or 0.95); BYOL gets 20 epochs at batch 64, SimSiam SGD 0.1 at batch 32.
- The reconstruction methods (DAE, SidAE) are the exception: their kNN stays within a few points of random
  init at this scale whatever the budget (DAE: 0.16-0.23 over widths 8-32, 4-20 epochs, AdamW or SGD, either
  reconstruction target; SidAE 0.17-0.24), so it cannot show learning with a margin that holds. Their test shows
  learning by the falling reconstruction loss and checks only that the kNN stays near random init's (a negative
  margin: the features keep what random init has).
- MAE needs a ViT: tests/test_vit_learn.py trains it (and MoCo v3, DINO, VICReg) on a small ViT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from bench.config import apply_overrides, resolve_run_config
from bench.data.registry import load_dataset
from bench.eval.protocols import evaluate_backbone
from bench.methods import all_methods
from bench.runner import run
from bench.train.engine import build_method

N_TEST = 5000
TEST_BED = {
    "dataset": {"name": "shapes", "n_train": 5000, "n_test": N_TEST},
    "backbone": {"name": "small_cnn", "width": 8},
    "epochs": 10,
    "batch_size": 128,
    "optimizer": {"name": "adamw", "lr": 3.0e-3, "lr_scaling": "none", "weight_decay": 1.0e-4},
    "schedule": {"warmup_epochs": 1},
    "augment": [{"scale": [0.2, 1.0], "jitter": [0.4, 0.4, 0.4, 0.5], "jitter_p": 0.8, "gray_p": 0.5}] * 2,
    "train": {"checkpoint_every": 0, "progress": False},
    "eval": {"probes": [], "knn_k": [20]},
}
HALF_CROPS = "augment=[{scale: [0.5, 1.0], jitter: [0.4, 0.4, 0.4, 0.5], gray_p: 0.5}, {scale: [0.5, 1.0], jitter: [0.4, 0.4, 0.4, 0.5], gray_p: 0.5}]"
SMALL_BATCH = [HALF_CROPS, "batch_size=64"]
TINY_BATCH = [HALF_CROPS, "batch_size=32"]


def sgd(lr: float) -> str:
    return f"optimizer={{name: sgd, lr: {lr}, momentum: 0.9, weight_decay: 5.0e-4, lr_scaling: none}}"


@dataclass(frozen=True)
class Knn:
    """kNN (k=20) top-1 accuracies of several runs: the lowest, the median and the highest."""

    low: float
    median: float
    high: float


@dataclass(frozen=True)
class Budget:
    sets: list[str]
    margin: float  #: kNN points over the random-init backbone (seed 0) that the test requires
    measured: Knn  #: every run of ``runs``
    seed0: Knn  #: the runs with seed 0, the test's own: the same initialisation, data and views on every machine
    cpu_s: float  #: CPU seconds (user + sys) of one run with one thread (median over the seeds)
    runs: str = "seeds 0, 1, 2 x 1 thread, seed 0 x 2 threads"


#: random-init kNN (width 8), seeds 0-7 (the test uses seed 0's: 0.190)
RANDOM_INIT = Knn(0.158, 0.184, 0.202)
#: methods whose kNN does not separate from random init's at this scale: the loss shows their learning
RECONSTRUCTION = {"dae", "sidae"}
#: methods whose loss need not fall in a short run (see above): the kNN margin shows their learning
LOSS_MAY_RISE = {"dino"}
#: budgets that learn from the test's initialisation but not from every other seed's (see above): their margin
#: holds over the seed-0 runs
INIT_SENSITIVE = {"barlow_twins", "corinfomax", "mocov2", "simsiam", "wmse"}

BUDGETS = {
    "simclr": Budget(["method.projector=512-128", "method.temperature=0.2", "epochs=8"],
                     0.04, Knn(0.278, 0.303, 0.313), Knn(0.312, 0.312, 0.313), 20),
    "vicreg": Budget(["method.projector=512-512", "epochs=5"],
                     0.03, Knn(0.259, 0.348, 0.362), Knn(0.362, 0.362, 0.362), 16),
    "barlow_twins": Budget(["method.projector=512-512", "epochs=10"],
                           0.02, Knn(0.202, 0.255, 0.258), Knn(0.252, 0.255, 0.258), 24),
    "mveb": Budget(["method.projector=512-512-512", "method.tau_base=0.99", "epochs=6"],
                   0.02, Knn(0.238, 0.255, 0.271), Knn(0.271, 0.271, 0.271), 26),
    "corinfomax": Budget(["method.projector=512-512-64", "epochs=7"],
                         0.05, Knn(0.210, 0.265, 0.293), Knn(0.289, 0.291, 0.293), 18),
    "supervised": Budget(["epochs=3"],
                         0.03, Knn(0.257, 0.293, 0.313), Knn(0.290, 0.293, 0.295), 5),
    "byol": Budget(["method.projector=512-128", "method.predictor=512-128", "method.tau_base=0.95", "optimizer.lr=6.0e-3",
                    "epochs=20", *SMALL_BATCH],
                   0.02, Knn(0.240, 0.245, 0.280), Knn(0.240, 0.240, 0.240), 72, "seeds 0, 1, 2 x 1 thread"),
    "simsiam": Budget(["method.projector=512-512", "method.predictor=128-512", "epochs=10", sgd(0.1), *TINY_BATCH],
                      0.02, Knn(0.138, 0.230, 0.262), Knn(0.236, 0.249, 0.262), 31),
    "swav": Budget(["method.projector=512-128", "method.num_prototypes=30", "method.freeze_prototypes_steps=0",
                    "method.epsilon=0.03", "epochs=7", *SMALL_BATCH],
                   0.03, Knn(0.265, 0.300, 0.303), Knn(0.299, 0.300, 0.302), 18),
    "mvmr": Budget(["method.projector=512-512", "method.representations=[hog]", "method.mse_reduction=mean", "epochs=4",
                    *SMALL_BATCH],
                   0.10, Knn(0.350, 0.365, 0.369), Knn(0.362, 0.365, 0.369), 17),
    "mocov3": Budget(["method.projector=512-512-128", "method.predictor=512-128", "method.temperature=0.2", "method.momentum=0.9",
                      "epochs=6", *SMALL_BATCH],
                     0.02, Knn(0.243, 0.267, 0.276), Knn(0.272, 0.274, 0.276), 25),
    "mocov2": Budget(["method.projector=512-128", "method.queue_size=256", "method.momentum=0.99", "method.symmetric=true",
                      "epochs=6", *SMALL_BATCH],
                     0.02, Knn(0.178, 0.245, 0.250), Knn(0.246, 0.248, 0.250), 29),
    "sidae": Budget(["method.projector=512-512", "method.predictor=128-512", "method.w=0.2", "epochs=5", *TINY_BATCH],
                    -0.05, Knn(0.174, 0.175, 0.217), Knn(0.217, 0.217, 0.217), 47, "seeds 0, 1, 2 x 1 thread"),
    "dae": Budget(["method.projector=512-512", "epochs=4", *TINY_BATCH],
                  -0.05, Knn(0.177, 0.187, 0.202), Knn(0.202, 0.202, 0.202), 35, "seeds 0, 1, 2 x 1 thread"),
    "dino": Budget(['method.projector="128"', "method.out_dim=256", "method.teacher_temp=0.02", "method.warmup_teacher_temp=0.02",
                    "method.momentum_base=0.99", *SMALL_BATCH],
                   0.03, Knn(0.255, 0.287, 0.293), Knn(0.286, 0.287, 0.289), 38),
    "wmse": Budget(['method.projector="32"', "method.w_size=64", "epochs=8", *SMALL_BATCH],
                   0.03, Knn(0.223, 0.242, 0.283), Knn(0.259, 0.271, 0.283), 22),
}


def config(method: str, *extra: str):
    return resolve_run_config(apply_overrides(TEST_BED, [f"method={method}", *BUDGETS[method].sets, *extra]))


def binomial_sd(p: float, n: int = N_TEST) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def test_bed():
    """The shapes splits and the kNN of the random-init backbone (seed 0, as every budget's run)."""
    cfg = config("simclr")
    splits = load_dataset(cfg.dataset)
    backbone = build_method(cfg, splits).backbone
    return splits, evaluate_backbone(backbone, splits, cfg.eval, torch.device("cpu"), cfg.seed).metrics["knn20.top1"]


def test_every_method_has_a_budget_on_the_same_test_bed():
    assert set(BUDGETS) == {name for name, cls in all_methods().items() if not cls.needs_vit}
    beds = {(c.dataset.name, c.dataset.n_train, c.dataset.n_test, c.backbone.width, c.seed) for c in map(config, BUDGETS)}
    assert beds == {("shapes", 5000, N_TEST, 8, 0)}


@pytest.mark.parametrize("method", sorted(BUDGETS))
def test_each_margin_holds_with_slack_in_the_measured_runs(method):
    """The margin stays below the lowest measured kNN less the highest random-init kNN and 2 binomial sd."""
    budget = BUDGETS[method]
    if method not in RECONSTRUCTION:
        assert budget.margin >= 0.02, f"{method}: a margin under 2 points does not show learning"
    low = budget.seed0.low if method in INIT_SENSITIVE else budget.measured.low
    slack = low - RANDOM_INIT.high - 2 * binomial_sd(low) - budget.margin
    assert slack >= 0, f"{method}: the margin leaves no room in what was measured (short by {-slack:.3f})"


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BUDGETS))
def test_method_learns_within_its_budget(method, test_bed, tmp_path):
    splits, baseline = test_bed
    cfg = config(method)
    cfg.train.cache_dir = tmp_path / "cache"
    report = run(cfg, tmp_path, splits=splits)
    losses = [h.loss for h in report.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    if method not in LOSS_MAY_RISE:
        assert losses[-1] < losses[0], f"{method}: the loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})"
    assert report.metrics["diag.collapsed"] == 0.0
    knn, margin = report.metrics["knn20.top1"], BUDGETS[method].margin
    assert knn >= baseline + margin, f"{method}: kNN {knn:.3f} after {cfg.epochs} epochs vs {baseline:.3f} at random init"
