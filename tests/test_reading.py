"""``method.reading: paper | code``: one switch per method selects every reading of its official code at once
(bench/methods/base.py); an option given explicitly still wins. Loss values on hand-computed inputs for the loss
readings (VICReg, MV-MR, Barlow Twins), the head's last layer for the architecture readings (SimCLR, MoCo v3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.config.run import resolve_run_config
from bench.methods import all_methods, method_class
from bench.methods.barlow_twins import BarlowTwinsParams, barlow_twins_loss
from bench.methods.mvmr import MVMRParams, mvmr_loss
from bench.methods.vicreg import VICRegParams, vicreg_loss
from bench.models.backbones import SmallCNN

#: the methods whose official code reads the paper differently somewhere
WITH_CODE_READING = {"barlow_twins", "mocov3", "mvmr", "simclr", "vicreg"}


@pytest.mark.parametrize("name", sorted(all_methods()))
def test_the_switch_selects_every_code_reading_and_an_explicit_option_wins(name):
    params = method_class(name).Params
    assert bool(params.code_reading) == (name in WITH_CODE_READING)
    paper, code = params(), params(reading="code")
    assert paper.reading_in_effect() == "paper" and code.reading_in_effect() == "code"
    for key, value in params.code_reading.items():
        assert getattr(paper, key) == params.model_fields[key].default != value  # paper: the field's default
        assert getattr(code, key) == value
        kept = params(reading="code", **{key: getattr(paper, key)})  # an explicit option overrides the reading
        assert getattr(kept, key) == getattr(paper, key)
        assert kept.reading_in_effect() == ("paper" if len(params.code_reading) == 1 else "mixed")
    same = {k for k in params.model_fields if k not in params.code_reading and k != "reading"}
    assert paper.model_dump(include=same) == code.model_dump(include=same)  # nothing else changes
    resolved = resolve_run_config({"method": {"name": name, "reading": "code"}}).method  # also through a run config
    assert resolved.model_dump() == code.model_dump()


def test_vicreg_code_reading_averages_the_variance_terms():
    """z1 = [[0, 0], [2, 0]], z2 = [[0, 1], [2, 1]]: invariance mean((z1 - z2)^2) = 0.5; each branch's variance
    hinge: dimension 0 has std sqrt(2 + eps) > 1 (hinge 0), dimension 1 std sqrt(eps) = 0.01 (hinge 0.99), so
    v(Z) = v(Z') = 0.495; no covariance between the dimensions. Eq. 6: 25 * 0.5 + 25 * (0.495 + 0.495) = 37.25;
    the code halves the variance: 25 * 0.5 + 25 * 0.495 = 24.875."""
    z1, z2 = torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    for reading, expected in (("paper", 37.25), ("code", 24.875)):
        p = VICRegParams(reading=reading)
        loss, terms = vicreg_loss(z1, z2, p.sim_coeff, p.std_coeff, p.cov_coeff, p.gamma, p.eps, p.variance_branches)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert terms["covariance"].item() == 0


def test_mvmr_code_reading_on_a_two_sample_batch():
    """B = 2 (D = 2): z = [[0, 0], [2, 0]], z~ = [[1, 0], [1, 2]], one representation [[0], [1]]. Two points make
    every distance correlation 1 (R and R^2 alike). Paper: Eq. 6 sums over D, (1 + 5) / 2 = 3; variance hinges
    (eps 1e-4): one constant dimension per view, 1 - 0.01 = 0.99 each, v(Z) + v(Z~) = 0.99; L2 = 1 - 1 = 0;
    L3 = 1 - 1 = 0: 3.99. Code: mean over B*D, 6 / 4 = 1.5; no eps, 0.5 + 0.5 = 1; L2 = 0; L3 adds + dCor = 1: 3.5."""
    z, z_aug = torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    reps = {"raw": torch.tensor([[0.0], [1.0]])}
    for reading, expected in (("paper", 3.99), ("code", 3.5)):
        p = MVMRParams(reading=reading, representations=["raw"])
        loss, logs = mvmr_loss(z, z_aug, reps, p.betas(), lambd=p.lambd, mu=p.mu, alpha=p.alpha, gamma=p.gamma, eps=p.eps,
                               mse_reduction=p.mse_reduction, l3_mode=p.l3_mode, dcor_squared=p.dcor_squared,
                               dcor_eps=p.dcor_eps, terms=p.terms)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert logs["dcor_raw"].item() == pytest.approx(1.0, rel=1e-6)
    assert MVMRParams(reading="code").dcor_squared is False  # R, not Eq. 5's R^2 (tests/test_mvmr.py: the values)


def test_barlow_twins_code_reading_is_its_lambda():
    """Identical columns in both views: C = [[1, 1], [1, 1]], so the diagonal term is 0 and the off-diagonal sum 2:
    L = lambda * 2, 0.01 with the paper's 5e-3 and 0.0102 with the code's 0.0051."""
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    for reading, expected in (("paper", 0.01), ("code", 0.0102)):
        loss, _ = barlow_twins_loss(z, z, BarlowTwinsParams(reading=reading).lambd)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name,head,last,code_last", [("simclr", "projector", nn.Linear, nn.BatchNorm1d),
                                                      ("mocov3", "predictor", nn.BatchNorm1d, nn.Linear)])
def test_architecture_readings_end_the_head_differently(name, head, last, code_last):
    """SimCLR's official code batch-normalises the projector output (the paper's g(h) ends with W2); MoCo v3's paper
    puts BN on the predictor output, its code ends with a plain Linear. With BN last, a training batch comes out
    standardised per dimension."""
    cls = method_class(name)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for reading, layer in (("paper", last), ("code", code_last)):
        torch.manual_seed(0)
        params = cls.Params(reading=reading, projector="16-8", **({"predictor": "16-8"} if name == "mocov3" else {}))
        method = cls(SmallCNN(3, 4), params, num_classes=10, image_shape=(3, 16, 16))
        module = getattr(method, head)
        assert isinstance(module[-1], layer)
        out = module(method.projector(method.backbone(x)) if head == "predictor" else method.backbone(x))
        standardised = torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)
        assert standardised == (layer is nn.BatchNorm1d)
