"""Training for a time budget ("train for N minutes") instead of a number of iterations.

The run counts from the trainer's creation, so reading and preprocessing the cases come out
of the budget. After a short warm-up (the first iterations are slow: allocations, caches,
thread pools) the budget measures seconds per iteration and the time one case takes to
predict, then fixes the number of iterations so that training, the validations and the
prediction of the unlabelled cases (when asked for) end within the budget. The learning-rate
schedule and the consistency ramp-up then run over that number, as over a number given
in advance: the trainer reads ``config.iterations`` at every step.

Validations are timed as they run (their seconds are kept out of the step pace, and their
measured cost replaces the estimate); their number follows the count (every tenth of the run,
so every step of a run shorter than 20), which the budget solves for. A machine that becomes
slower after the warm-up (another job starts) would overrun the budget, so the plan is
checked again at every progress record, on the pace of the last ten (of at least
``MEASURED_ITERATIONS`` steps: two noisy steps must not cut the run), and shortened: the
poly schedule then ends at the new count (its remaining part is compressed). The count
grows, by ``GROW_MARGIN`` at least, once a full window of checks shows that much time left:
a passing load, or a warm-up slower than the run (its first steps pay for allocations; a
10-minute run of UniMatch on LA was cut by its first check and ended after 442 s when the
count could not grow beyond the warm-up's). ``config.iterations`` as given stays the cap.
Every decision is a progress record (``{"event": "budget", ...}``) and ``budget.json`` in the
run folder; the count is agreed over the ranks of a distributed run.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import asdict, dataclass

from ..config import BUDGET_ITERATION_CAP as DEFAULT_CAP  # noqa: F401  (the settings' own: torch-free)
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
GROW_MARGIN = 1.1
"""The count grows only to at least this many times itself (no back and forth)."""
FIXED_AFTER_S = 2.0
"""Saving the checkpoints and the model, closing the data stream."""


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
        self._validation_s_total, self._validations_done = 0.0, 0

    @classmethod
    def for_trainer(cls, trainer) -> "TimeBudget | None":
        """The budget of ``trainer``'s run (None without ``config.time_budget``); sets the
        provisional iteration count of the warm-up. ``config.iterations`` is the cap."""
        config = trainer.config
        if not config.time_budget:
            return None
        budget = cls(trainer, config.time_budget, trainer.started, cap=config.iterations)
        config.iterations = min(config.iterations, PROVISIONAL_ITERATIONS)
        budget._time_validations()
        trainer.log.info("time budget: %.1f min, of which %.0f s went into the set-up", budget.minutes, budget.setup_s)
        return budget

    def _time_validations(self) -> None:
        """Time the trainer's validations: their seconds are kept out of the pace of the steps
        and, once one ran, replace the estimate of the ones to come."""
        validate = self.trainer.validate

        def timed_validate():
            started = time.monotonic()
            try:
                return validate()
            finally:
                self._validation_s_total += time.monotonic() - started
                self._validations_done += 1

        self.trainer.validate = timed_validate

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
        prediction_s = self._prediction_s()
        iterations = self._agreed(self._affordable(done, now, seconds_per_iteration, prediction_s))
        self.trainer.config.iterations = iterations
        self._planned_pace = seconds_per_iteration
        self._recent = collections.deque([(done, now, self._validation_s_total)], maxlen=RECENT_CHECKS)
        validation_s = self._validations_between(done, iterations) * self._one_validation_s()
        self.plan = BudgetPlan(self.minutes, iterations, round(seconds_per_iteration, 4), round(self._per_case_s, 3),
                               round(validation_s, 1), round(prediction_s, 1), round(self.setup_s, 1), done, done,
                               reason)
        self._record("iterations fixed at %d (%.3f s per iteration; %.0f s kept for validation, %.0f s for "
                     "prediction)", iterations, seconds_per_iteration, validation_s, prediction_s)
        self.trainer.warn_if_short_run(iterations)

    def _check(self, done: int, now: float) -> None:
        """Shorten the plan when the recent pace would overrun the deadline; lengthen it when
        a full window of checks leaves much time unused."""
        self._recent.append((done, now, self._validation_s_total))
        first_done, first_time, first_validation_s = self._recent[0]
        if done - first_done < MEASURED_ITERATIONS:  # too few steps for a pace
            return
        stepping_s = (now - first_time) - (self._validation_s_total - first_validation_s)
        pace = max(stepping_s, 1e-6) / max(1, done - first_done)  # over the last ten checks, validations excluded
        # what slowed the steps down slows the (not yet measured) predictions down too
        slowdown = max(1.0, pace / max(self._planned_pace, 1e-6))
        planned = self.trainer.config.iterations
        prediction_s = self._prediction_s(slowdown)
        validations_s = self._validations_between(done, planned) * self._one_validation_s(slowdown)
        remaining_s = (planned - done) * pace + validations_s + prediction_s + FIXED_AFTER_S
        proposal = planned
        if now + remaining_s > self.deadline:
            proposal = min(planned, self._affordable(done, now, pace, prediction_s, slowdown))
        elif len(self._recent) == RECENT_CHECKS:  # on time over a full window: grow if much time is left
            affordable = self._affordable(done, now, pace, prediction_s, slowdown)
            proposal = affordable if affordable >= GROW_MARGIN * planned else planned
        agreed = self._agreed(proposal)
        if agreed != planned:
            reason = "slower" if agreed < planned else "faster"
            self.trainer.config.iterations = agreed
            self.plan.iterations, self.plan.seconds_per_iteration, self.plan.reason = agreed, round(pace, 4), reason
            self.plan.decided_at = done
            self._record("the machine got %s (%.3f s per iteration): iterations %s from %d to %d", reason, pace,
                         "cut" if agreed < planned else "raised", planned, agreed)
            self.trainer.warn_if_short_run(agreed)

    # --- estimates ----------------------------------------------------------------------------
    def _affordable(self, done: int, now: float, pace: float, prediction_s: float, slowdown: float = 1.0) -> int:
        """The most iterations that end, with their validations and the prediction, within
        ``SAFETY`` of the time left. The number of validations depends on the count (one every
        tenth of the run, or every ``val_interval``), so the count is refined a few times."""
        available = SAFETY * (self.deadline - now) - prediction_s - FIXED_AFTER_S
        count = min(self.cap, done + max(1, math.floor(available / max(pace, 1e-6))))
        for _ in range(5):
            validations_s = self._validations_between(done, count) * self._one_validation_s(slowdown)
            count = min(self.cap, done + max(1, math.floor((available - validations_s) / max(pace, 1e-6))))
        return count

    def _validations_between(self, done: int, total: int) -> int:
        """Validations the trainer runs after step ``done`` up to ``total`` (its rule: every
        ``val_interval`` or tenth of the run, and at the end)."""
        if not self.trainer.data.validation or total <= done:
            return 0
        interval = self.trainer.config.val_interval or max(1, total // 10)
        return total // interval - done // interval + (1 if total % interval else 0)

    def _one_validation_s(self, slowdown: float = 1.0) -> float:
        """Seconds of one validation: the mean of those that ran, else estimated."""
        if self._validations_done:
            return self._validation_s_total / self._validations_done
        return AFTER_TRAINING_FACTOR * self._per_case_s * len(self.trainer.data.validation) * slowdown

    def _prediction_s(self, slowdown: float = 1.0) -> float:
        """Seconds of predicting the unlabelled cases after training (when asked for)."""
        predicted = len(self.trainer.dataset.unlabelled) if self.trainer.config.predict_unlabelled else 0
        return AFTER_TRAINING_FACTOR * predicted * self._per_case_s * slowdown

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
            atomic_write_json(trainer.run.budget, asdict(self.plan))
