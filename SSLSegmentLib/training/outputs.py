"""What the trainer writes: progress records, the terminal's progress bar, checkpoints, the model file
and the unlabelled cases' predictions."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from ..domain import describe_training_domain
from ..fileio import atomic_path
from ..methods.base import short_run_warning
from ..model_file import load_model, save_model
from ..run_protocol import SHORT_RUN
from .divergence import check_weights


class TrainerOutputs:
    """Part of :class:`SSLSegmentLib.training.trainer.Trainer` (uses its run, method, optimisers and data)."""

    warnings: list[str]
    """What the run's ``status.json`` lists under ``warnings`` when it ends done."""

    def warn_if_short_run(self, iterations: int) -> None:
        """Warn (log, progress, status) when ``iterations`` are too few for the method to gain.

        A time budget fixes the count again as the pace changes: each new count replaces the
        earlier warning (status.json and the panel show one, with the count the run will do),
        and a count long enough withdraws it."""
        warning = short_run_warning(self.method, iterations, self.data.plan.dim)
        earlier = getattr(self, "_short_run_message", None)
        if warning == earlier:
            return
        if earlier is not None:
            self.warnings.remove(earlier)
        self._short_run_message = warning
        if warning is not None:
            self.warnings.append(warning)
        self.run.add_progress({"event": "warning", "key": SHORT_RUN, "message": warning})
        if self.context.is_main:
            if warning is not None:
                self.log.warning("warning: %s", warning)
            else:
                self.log.info("%d iterations are enough for %s: the short-run warning is withdrawn", iterations,
                              self.method.name)

    def _progress_record(self, done, total, losses_sum, steps, lr, weight, started, val_dice) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        record = {"iteration": done, "total": total,
                  "losses": {k: round(float(v) / steps, 6) for k, v in losses_sum.items()},
                  "lr": lr, "elapsed_s": round(elapsed, 2),
                  "eta_s": round(elapsed / max(1, done - self.start_iteration) * (total - done), 1)}
        if self.method.uses_unlabelled:
            record["consistency_weight"] = round(weight, 6)
        if val_dice is not None:
            record["val_dice"] = round(val_dice, 5)
        return record

    def _show(self, record: dict) -> None:
        if not self.progress_bar:
            return
        done, total = record["iteration"], record["total"]
        filled = int(30 * done / total)
        loss = next(iter(record["losses"].values()), float("nan"))
        val = f" val Dice {record['val_dice']:.3f}" if "val_dice" in record else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} loss {loss:.4f}{val} "
                         f"ETA {record['eta_s']:.0f}s ")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _save_checkpoint(self, kind: str, iteration: int, best_dice: float | None) -> None:
        check_weights(self.method, iteration, self.config)
        payload = {"iteration": iteration, "best_dice": best_dice, "method": self.method.name,
                   "state": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
                   "optimisers": {name: opt.state_dict() for name, opt in self.optimisers.items()}}
        with atomic_path(self.run.checkpoint(kind)) as tmp:
            torch.save(payload, tmp)

    def _save_model(self, source: str, best_dice: float | None) -> None:
        if source == "best":
            state = torch.load(self.run.checkpoint("best"), map_location="cpu", weights_only=True)["state"]
            self.method.load_state_dict(state)
        save_model(self.run.model, self.method.inference_network(), network_name=self.config.network,
                   size=self.config.size, classes=self.data.classes, plan=self.data.plan, patch_size=self.data.patch,
                   method=self.method.name, extra={"checkpoint": source, "best_val_dice": best_dice,
                                                   "iterations": self.config.iterations},
                   domain=describe_training_domain([c.image for c in self.dataset.labelled + self.dataset.unlabelled]))

    def predict_unlabelled(self, keep_done: bool = False) -> dict[str, float]:
        """Predict every unlabelled case with the saved model into ``run.predictions``
        (``--predict-unlabelled``); ``keep_done``: not those this model already predicted there
        (a run resumed after its training, killed while predicting)."""
        from ..inference import predict_cases  # noqa: PLC0415

        cases = self.dataset.unlabelled
        if not cases:  # every case is labelled: the run is still done, with nothing to predict
            self.log.info("--predict-unlabelled: no unlabelled case to predict")
            return {}
        model = load_model(self.run.model, self.device)

        def report(done: int, total: int, name: str) -> None:
            self.run.add_progress({"phase": "predicting", "case": name, "done": done, "total": total})
            self.log.info("predicted %s (%d/%d)", name, done, total)

        return predict_cases(model, cases, self.run.predictions, self.device, on_case=report,
                             largest_component=self.config.largest_component, overwrite=True,  # the run's own folder
                             keep_done=keep_done)
