"""A progress bar per phase that stays quiet in logs: a tqdm bar on a terminal, one line an epoch elsewhere."""

from __future__ import annotations

import sys
from tqdm.auto import tqdm


class PhaseProgress:
    """Epochs of one phase, with every trained exit's validation accuracy in the postfix."""

    def __init__(self, label: str, epochs: int, enabled: bool = True, start: int = 0):
        self.label = label
        self.epochs = epochs
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=epochs, initial=start, desc=label, unit="epoch", leave=False) if self.interactive else None

    def update(self, epoch: int, metrics: dict[str, float]) -> None:
        summary = " ".join(f"{k}={v:.1f}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.n = epoch
            self.bar.set_postfix_str(summary)
        elif self.enabled:
            print(f"[{self.label}] epoch {epoch}/{self.epochs} val_acc% {summary}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepProgress:
    """Steps of a long computation (points of a loss plane, runs of an analysis): a tqdm bar on a
    terminal, else a line at every tenth of the steps, on stderr (which ``mexit book`` forwards from
    its notebooks to the terminal)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.bar = tqdm(total=total, desc=label, leave=False) if enabled and sys.stderr.isatty() else None

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (self.done == self.total or self.done % max(1, self.total // 10) == 0):
            print(f"[{self.label}] {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
