"""Would a label-free proxy have picked the right configuration? Kendall's tau between a proxy read without labels
(RankMe, ``val.rankme``) and an accuracy (the linear probe's top-1) across a suite's complete cells.

tau is ``scipy.stats.kendalltau``'s tau-b (ties counted as neither concordant nor discordant) with its two-sided
p-value; +1 when the proxy orders the cells exactly as the accuracy does.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy.stats import kendalltau

from bench.core.states import CellStatus
from bench.errors import ConfigError


@dataclass(frozen=True)
class ProxyAgreement:
    """tau and p over ``n`` cells; ``picked`` is the cell the proxy ranks first, ``best`` the one the target does,
    ``regret`` the target's loss from trusting the proxy (``target[best] - target[picked]``, 0 when they agree)."""

    proxy: str
    target: str
    n: int
    tau: float
    p_value: float
    picked: str
    best: str
    regret: float

    def line(self) -> str:
        """One sentence for a table's caption."""
        choice = ("it picks the best cell" if self.picked == self.best
                  else f"it picks {self.picked}, {self.regret:.3g} below the best cell {self.best}")
        return (f"Kendall's tau between {self.proxy} and {self.target} over {self.n} cells: {self.tau:.2f} "
                f"(p = {self.p_value:.2g}); {choice}")


def proxy_agreement(runs: pd.DataFrame, proxy: str = "val.rankme", target: str = "linear.top1") -> ProxyAgreement:
    """tau between ``proxy`` and ``target`` over the complete cells of ``runs`` (columns ``cell_id``, ``status``,
    and the two metrics) that have both; higher is better for both."""
    missing = [m for m in (proxy, target) if m not in runs]
    if missing:
        raise ConfigError(f"no cell of the suite has {', '.join(missing)}; the suite must log both {proxy} and {target}")
    done = runs[runs["status"] == CellStatus.COMPLETE].dropna(subset=[proxy, target])
    if len(done) < 2:
        raise ConfigError(f"Kendall's tau needs two complete cells with {proxy} and {target}; the suite has {len(done)}")
    result = kendalltau(done[proxy], done[target])
    picked, best = done.loc[done[proxy].idxmax()], done.loc[done[target].idxmax()]
    return ProxyAgreement(proxy, target, len(done), float(result.statistic), float(result.pvalue), str(picked["cell_id"]),
                          str(best["cell_id"]), float(best[target] - picked[target]))
