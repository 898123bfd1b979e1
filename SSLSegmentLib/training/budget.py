"""Training for a time budget ("train for N minutes") instead of a number of iterations.

The run counts from the trainer's creation, so reading and preprocessing the cases come out
of the budget. After a short warm-up (the first iterations are slow: allocations, caches,
thread pools) the budget measures seconds per iteration and the time one case takes to
predict, then fixes the number of iterations so that training, the validations and the
prediction of the unlabelled cases (when asked for) end within the budget. The learning-rate
schedule and the consistency ramp-up then run over that number, as over a number given
in advance: the trainer reads ``config.iterations`` at every step.

A machine that becomes slower after the warm-up (another job starts) would overrun the
budget, so the plan is checked again at every progress record and only ever shortened: the
poly schedule then ends at the new count (its remaining part is compressed). Every decision
is a progress record (``{"event": "budget", ...}``) and ``budget.json`` in the run folder.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import asdict, dataclass

from ..config import PROVISIONAL_ITERATIONS
from ..fileio import atomic_write_json
from ..inference import predict_probabilities

SKIPPED_ITERATIONS = 2
"""Iterations excluded from the measurement (first-call allocations, thread start-up)."""
MEASURED_ITERATIONS = 8
"""Iterations timed to estimate seconds per iteration (fewer if they take too long)."""
WARMUP_SHARE = 0.05
"""The warm-up stops measuring once it has used this share of the budget (two timed
iterations at least): a slow machine with a short budget must not spend it measuring."""
SAFETY = 0.92
"""Share of the remaining time planned for: noise in the step time, saving, start-up."""
AFTER_TRAINING_FACTOR = 1.5
"""Prediction after training also reads, resamples and writes each case: its measured
sliding-window time is multiplied by this."""
RECENT_CHECKS = 10
"""After the warm-up, the pace is measured over this many checks (progress records)."""
FIXED_AFTER_S = 2.0
"""Saving the checkpoints and the model, closing the data stream."""
DEFAULT_CAP = 1_000_000
"""The most iterations a budget may choose when no ``--iterations`` caps it."""


@dataclass
class BudgetPlan:
    """What the budget decided; written to ``budget.json`` and the progress."""

    minutes: float
    iterations: int
    seconds_per_iteration: float
    seconds_per_predicted_case: float
    validation_s: float
    prediction_s: float
    setup_s: float
    warmup_iterations: int
    decided_at: int
    """The iteration after which the count was last fixed or cut."""
    reason: str = "warm-up"


class TimeBudget:
    """Fixes and guards the iteration count of one run; see the module docstring."""

    def __init__(self, trainer, minutes: float, started: float, cap: int):
        self.trainer = trainer
        self.minutes = float(minutes)
        self.started = started
        self.deadline = started + 60.0 * self.minutes
        self.cap = cap
        self.setup_s = time.monotonic() - started
        self.plan: BudgetPlan | None = None
        self._mark: tuple[int, float] | None = None
        self._per_case_s = 0.0
        self._planned_pace = 0.0

    @classmethod
    def for_trainer(cls, trainer) -> "TimeBudget | None":
        """The budget of ``trainer``'s run (None without ``config.time_budget``); sets the
        provisional iteration count of the warm-up. ``config.iterations`` is the cap."""
        config = trainer.config
        if not config.time_budget:
            return None
        budget = cls(trainer, config.time_budget, trainer.started, cap=config.iterations)
        config.iterations = min(config.iterations, PROVISIONAL_ITERATIONS)
        trainer.log.info("time budget: %.1f min, of which %.0f s went into the set-up", budget.minutes, budget.setup_s)
        return budget

    # --- called by the trainer after every step -----------------------------------------------
    def after_step(self, done: int) -> None:
        now = time.monotonic()
        if self.plan is None:
            self._warm_up(done, now)
        elif done % self._check_interval() == 0 and done < self.trainer.config.iterations:
            self._check(done, now)

    def _warm_up(self, done: int, now: float) -> None:
        # Every decision is agreed over the ranks (``context.any``): they must all reach the
        # collective of ``_agreed`` at the same step, whatever their own clocks say.
        context = self.trainer.context
        if self._mark is None:
            if done >= SKIPPED_ITERATIONS:
                self._mark = (done, now)
            elif context.any(now > self.started + SAFETY * 60.0 * self.minutes):  # no time left to measure
                self._fix(done, now, (now - self.started - self.setup_s) / done, reason="budget spent in the warm-up")
            return
        timed, spent = done - self._mark[0], now - self._mark[1]
        if context.any(timed >= MEASURED_ITERATIONS or (timed >= 2 and spent > WARMUP_SHARE * 60.0 * self.minutes)):
            self._per_case_s = self._measure_prediction()
            self._fix(done, time.monotonic(), spent / timed)

    def _fix(self, done: int, now: float, seconds_per_iteration: float, reason: str = "warm-up") -> None:
        per_iteration, validations_s, prediction_s = self._costs(seconds_per_iteration)
        available = SAFETY * (self.deadline - now) - validations_s - prediction_s - FIXED_AFTER_S
        iterations = self._agreed(min(self.cap, done + max(1, math.floor(available / per_iteration))))
        self.trainer.config.iterations = iterations
        self._planned_pace = seconds_per_iteration
        self._recent = collections.deque([(done, now)], maxlen=RECENT_CHECKS)
        self.plan = BudgetPlan(self.minutes, iterations, round(seconds_per_iteration, 4), round(self._per_case_s, 3),
                               round(validations_s + (iterations - done) * (per_iteration - seconds_per_iteration), 1),
                               round(prediction_s, 1), round(self.setup_s, 1), done, done, reason)
        self._mark = (done, now)
        self._record("iterations fixed at %d (%.3f s per iteration; %.0f s kept for validation, %.0f s for "
                     "prediction)", iterations, seconds_per_iteration, self.plan.validation_s, prediction_s)

    def _check(self, done: int, now: float) -> None:
        """Shorten the plan when the recent pace would overrun the deadline (never lengthen
        it: the schedule already ran part of its course)."""
        self._recent.append((done, now))
        first_done, first_time = self._recent[0]
        pace = (now - first_time) / max(1, done - first_done)  # over the last ten checks
        # what slowed the steps down slows the validations and the prediction down too
        slowdown = max(1.0, pace / max(self._planned_pace, 1e-6))
        per_iteration, validations_s, prediction_s = self._costs(pace, slowdown)
        validations_s *= 1.0 - done / self.trainer.config.iterations  # the validations still to come
        planned = self.trainer.config.iterations
        fixed_s = validations_s + prediction_s + FIXED_AFTER_S
        proposal = planned
        if now + (planned - done) * per_iteration + fixed_s > self.deadline:
            affordable = SAFETY * (self.deadline - now) - fixed_s
            proposal = done + max(1, math.floor(affordable / per_iteration))
        agreed = self._agreed(min(proposal, planned))
        if agreed < planned:
            self.trainer.config.iterations = agreed
            self.plan.iterations, self.plan.seconds_per_iteration, self.plan.reason = agreed, round(pace, 4), "slower"
            self.plan.decided_at = done
            self._record("the machine got slower (%.3f s per iteration): iterations cut from %d to %d", pace,
                         planned, agreed)

    # --- estimates ----------------------------------------------------------------------------
    def _costs(self, seconds_per_iteration: float, slowdown: float = 1.0) -> tuple[float, float, float]:
        """(seconds per iteration with validation every ``val_interval``, seconds of the
        validations whose number does not grow with the run, seconds of the final prediction)."""
        data, config = self.trainer.data, self.trainer.config
        per_case_s = self._per_case_s * slowdown
        validation_case_s = AFTER_TRAINING_FACTOR * per_case_s * len(data.validation)
        per_iteration, validations_s = max(seconds_per_iteration, 1e-6), 0.0
        if data.validation and config.val_interval:
            per_iteration += validation_case_s / config.val_interval
        elif data.validation:
            validations_s = 10 * validation_case_s  # the trainer validates every tenth of the run
        predicted = len(self.trainer.dataset.unlabelled) if config.predict_unlabelled else 0
        return per_iteration, validations_s, AFTER_TRAINING_FACTOR * predicted * per_case_s

    def _measure_prediction(self) -> float:
        """Seconds of one sliding-window prediction of the largest case that will be predicted
        (in validation or after training), 0 when none will be."""
        trainer, data = self.trainer, self.trainer.data
        cases = list(data.validation) + (list(data.unlabelled) if trainer.config.predict_unlabelled else [])
        if not cases:
            return 0.0
        case = max(cases, key=lambda c: math.prod(c.shape))
        start = time.monotonic()
        predict_probabilities(trainer.method.inference_network(), case.load("image"), data.plan.dim, data.patch,
                              trainer.device, amp=trainer.amp)
        trainer.method.train()
        return time.monotonic() - start

    def _check_interval(self) -> int:
        return max(1, min(50, self.trainer.config.iterations // 100))

    # --- records ------------------------------------------------------------------------------
    def _agreed(self, iterations: int) -> int:
        """The smallest count over the ranks (every rank must stop at the same step)."""
        return int(self.trainer.context.minimum([int(iterations)])[0])

    def _record(self, message: str, *args) -> None:
        trainer = self.trainer
        trainer.log.info("time budget: " + message, *args)
        trainer.run.add_progress({"event": "budget", **asdict(self.plan)})
        if trainer.context.is_main:
            atomic_write_json(trainer.run.path / "budget.json", asdict(self.plan))
