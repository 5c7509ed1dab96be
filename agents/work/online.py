"""Online next-move prediction: P(next return > 0) from the last N returns.

The streaming scenario asks for an "lstm". There is no deep-learning runtime here, so
this is what it is: an incrementally trained classifier over a sliding window of log
returns, either a logistic model trained by SGD (``"sgd"``) or a small multilayer
perceptron (``"mlp"``), both updated with ``partial_fit`` as ticks arrive. ``"lstm"`` is
accepted and mapped to ``"mlp"`` (the closest substitute: nonlinear, learns from the same
window) with a logged warning, so the seed's pipeline runs unchanged.

Learning is prequential: for each batch, every window is scored with the model as it was
before the batch, then the model learns from the windows whose next return is now known,
and the newest window (whose next move is unknown) is scored again with the updated
model. No prediction ever sees its own label. One model is shared by all symbols.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import expit
from sklearn.linear_model import SGDClassifier
from sklearn.neural_network import MLPClassifier

from agents.work.errors import DataError
from agents.work.grouping import by_symbol, check_symbols
from mesh.errors import ConfigError, TooLarge

log = logging.getLogger(__name__)

MODELS: Final = ("sgd", "mlp")
#: Names accepted for compatibility, and what they map to.
ALIASES: Final = {"lstm": "mlp"}
MAX_WINDOW: Final = 1_000
MAX_BATCH: Final = 1_000_000


class OnlinePredictor:
    """Shared online model over per-symbol histories of the last ``window`` returns."""

    def __init__(
        self,
        window: int = 10,
        model: str = "sgd",
        *,
        seed: int = 0,
        alpha: float = 1e-4,
        learning_rate: float = 0.01,
        hidden: int = 16,
        max_symbols: int = 10_000,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
            raise ConfigError(f"window must be an int in [1, {MAX_WINDOW}], not {window!r}")
        if model in ALIASES:
            log.warning("model %r is not available (no deep-learning runtime); using %r, an "
                        "MLP over the last %d returns, trained online", model, ALIASES[model],
                        window)
            model = ALIASES[model]
        if model not in MODELS:
            raise ConfigError(f"model must be one of {list(MODELS) + list(ALIASES)}, "
                              f"not {model!r}")
        if not isinstance(hidden, int) or not 1 <= hidden <= 1024:
            raise ConfigError("hidden must be an int in [1, 1024]")
        if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate <= 1):
            raise ConfigError("learning_rate must be in (0, 1]")
        if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 100):
            raise ConfigError("alpha must be in [0, 100]")
        self.window = window
        self.model_name = model
        self.max_symbols = max_symbols
        # A constant step size, not a decaying one: a market drifts, and the model should
        # keep tracking it rather than freeze after the first few thousand ticks.
        if model == "sgd":
            self._clf: Any = SGDClassifier(loss="log_loss", alpha=alpha, random_state=seed,
                                           learning_rate="constant", eta0=learning_rate)
        else:
            self._clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha,
                                      learning_rate_init=learning_rate, random_state=seed)
        self._scaler = _RunningScaler(window)
        self._history: dict[str, np.ndarray] = {}
        self._fitted = False
        self.samples_seen = 0

    def update_and_predict(self, symbol: str, returns: Any) -> np.ndarray:
        """Fold new returns for one symbol; P(up) for the tick after each of them."""
        return self.update_and_predict_batch([symbol] * int(np.size(returns)), returns)

    def update_and_predict_batch(self, symbols: Sequence[str], returns: Any) -> np.ndarray:
        """The same for a batch of ticks of many symbols (in arrival order), in one
        ``partial_fit`` and two ``predict_proba`` calls for the whole batch.

        A tick whose symbol has fewer than ``window`` returns so far gets 0.5.
        """
        syms, r = self._validate(symbols, returns)
        out = np.full(r.size, 0.5)
        feats, rows, train_x, train_y = [], [], [], []
        last_row: dict[str, int] = {}
        new_hist: dict[str, np.ndarray] = {}
        w = self.window
        for sym, idx in by_symbol(syms):
            old = self._history.get(sym, np.empty(0))
            seq = np.concatenate((old, r[idx]))
            new_hist[sym] = seq[-w:]
            if seq.size < w:
                continue
            wins = sliding_window_view(seq, w)  # wins[j] ends at seq[j + w - 1]
            # Windows ending at the new returns are scored; their positions in ``out``.
            first = max(old.size, w - 1) - (w - 1)
            scored = wins[first:]
            feats.append(scored)
            rows.append(idx[idx.size - scored.shape[0]:])
            last_row[sym] = len(feats) - 1
            # Windows whose next return arrived in this batch are training examples.
            t_first = max(old.size - w, 0)
            if seq.size > w and t_first < seq.size - w:
                train_x.append(wins[t_first: seq.size - w])
                train_y.append(seq[t_first + w:] > 0)
        if feats:
            X = np.concatenate(feats)
            where = np.concatenate(rows)
            if self._fitted:
                out[where] = self._proba(X)
        if train_x:
            Xt = np.concatenate(train_x)
            yt = np.concatenate(train_y).astype(np.int64)
            self._scaler.update(Xt)
            self._clf.partial_fit(self._scaler.transform(Xt), yt, classes=np.array([0, 1]))
            self._fitted = True
            self.samples_seen += int(yt.size)
            # Re-score each symbol's newest window with the updated model.
            newest = [(rows[i][-1], feats[i][-1]) for i in last_row.values()]
            pos = np.array([p for p, _ in newest])
            out[pos] = self._proba(np.stack([f for _, f in newest]))
        self._history.update(new_hist)
        return out

    def _proba(self, X: np.ndarray) -> np.ndarray:
        Z = self._scaler.transform(X)
        if self.model_name == "sgd":
            # The logistic model's P(up), computed directly: predict_proba's input checks
            # cost more than the arithmetic at a few ticks per call.
            logit = Z @ self._clf.coef_[0] + self._clf.intercept_[0]
            return np.asarray(expit(logit), dtype=np.float64)
        return np.asarray(self._clf.predict_proba(Z)[:, 1], dtype=np.float64)

    def _validate(self, symbols: Sequence[str], returns: Any) -> tuple[list[str], np.ndarray]:
        if isinstance(symbols, (str, bytes)) or not isinstance(symbols, Sequence):
            raise DataError("symbols must be a list of strings")
        syms = list(symbols)
        if len(syms) > MAX_BATCH:
            raise TooLarge(f"batch of {len(syms)} ticks; the cap is {MAX_BATCH}")
        try:
            r = np.asarray(returns, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError("returns must be a numeric array")
        if r.size != len(syms):
            raise DataError(f"{len(syms)} symbols but {r.size} returns")
        if not np.all(np.isfinite(r)):
            raise DataError("returns must be finite (drop each symbol's first, NaN, return)")
        check_symbols(syms)  # each becomes a topic suffix downstream
        new = {s for s in syms if s not in self._history}
        if len(self._history) + len(new) > self.max_symbols:
            raise TooLarge(f"more than {self.max_symbols} symbols tracked")
        return syms, r


class _RunningScaler:
    """Per-feature mean and std over every row seen (Chan's parallel update), so the
    model sees unit-scale features whatever the size of a market's returns."""

    def __init__(self, n_features: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def update(self, X: np.ndarray) -> None:
        k = X.shape[0]
        b_mean = X.mean(axis=0)
        b_m2 = ((X - b_mean) ** 2).sum(axis=0)
        total = self.n + k
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.n * k / total)
        self.n = total

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.n < 2:
            return X - self.mean
        std = np.sqrt(self.m2 / self.n)
        return (X - self.mean) / np.where(std > 0, std, 1.0)
