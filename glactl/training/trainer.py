"""The training loop behind `glactl train`: AdamW steps, evaluation, checkpoints, Ctrl-C; `train()` runs it.

Batches are a pure function of (seed, step), so `--resume` continues exactly where a run stopped."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from glactl.data.task_scoring import TaskScore, masked_cross_entropy
from glactl.errors import GlactlError, InputError, RunFailure
from glactl.report.progress import Reporter
from glactl.runtime.distributed import Distributed
from glactl.storage.checkpoint import resolve_checkpoint_dir
from glactl.training.checkpoints import Checkpoints
from glactl.training.options import MODEL_DEFAULTS, TrainOptions
from glactl.training.run_folder import RunLock, prepare_run_folder
from glactl.training.run_log import LN2, RunLog
from glactl.training.setup import set_up


class TrainingInterrupted(GlactlError):
    """Ctrl-C during training: a checkpoint was saved; exit 130."""

    exit_code = 130


class Trainer:
    """One training run: set up from options (fresh, --init-from or --resume), then `run()`.

    After `setup()`: `parts` (model, data, optimizer, ...), `progress` (step, scores), `log` and `checkpoints`."""

    def __init__(
        self, options: TrainOptions, console: Any | None = None, on_step: Callable[[Trainer], None] | None = None
    ) -> None:
        self.options = options
        self.dist = Distributed.from_env()  # torchrun's RANK/WORLD_SIZE; one process without them
        self.report = Reporter(console if self.dist.is_main else None)  # rank 0 alone logs
        self.on_step = on_step
        self.stop_requested = False
        self.lock: RunLock | None = None

    def setup(self) -> None:
        """Lock the run folder, load data and model, build optimizer and schedule."""
        o = self.options
        if o.resume and not o.out:
            raise InputError("--resume needs --out RUN_FOLDER: the run to continue")
        mixer = o.model or MODEL_DEFAULTS["model"]
        out = Path(o.out) if o.out else None
        created = out is None or not out.exists()
        self.out = prepare_run_folder(o, mixer)
        self.lock = RunLock(self.out)
        if self.dist.is_main:  # one lock for the whole job
            self.lock.acquire()
        try:
            self.parts, self.progress = set_up(o, self.dist, self.report, self.out)
        except BaseException:
            self.lock.release()
            self.dist.close()
            if created:  # leave no empty run folder behind a failed start
                try:
                    self.out.rmdir()
                except OSError:
                    pass
            raise
        self.log = RunLog(o, self.parts, self.progress, self.dist, self.report, self.out)
        self.checkpoints = Checkpoints(o, self.parts, self.progress, self.out, self.dist.is_main)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """The validation score on the fixed set: bits per byte (text) or masked loss (task; see last_metrics)."""
        parts = self.parts
        was_training = parts.model.training
        parts.model.eval()
        total, count = 0.0, 0
        score = TaskScore()
        o = self.options
        # Ranks score their share of the windows; the sums are then the same on every rank.
        for x, y, mask in parts.source.eval_batches(
            self.dist.rank, self.dist.world, max(1, o.batch_size // self.dist.world)
        ):
            x, y = x.to(parts.device), y.to(parts.device)
            with parts.precision.autocast(parts.device):
                logits, _ = parts.model(x)
            if mask is not None:
                score.add(logits.float(), y, mask.to(parts.device))
                continue
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            total += loss.item()
            count += y.numel()
        parts.model.train(was_training)
        if parts.task is not None:
            score = TaskScore.from_totals(self.dist.sum(*score.totals()))
            self.progress.last_metrics = {k: round(v, 6) for k, v in score.metrics(parts.task.whole_sequence).items()}
            return self.progress.last_metrics["val_loss"]
        total, count = self.dist.sum(total, count)
        self.progress.last_metrics = {"val_bpb": total / count / LN2}
        return total / count / LN2

    def _evaluate_and_keep_best(self) -> None:
        p = self.progress
        bpb = self.evaluate()
        p.last_bpb = bpb
        improved = p.best_bpb is None or bpb < p.best_bpb
        if improved:
            p.best_bpb = bpb
            self.checkpoints.save_best()
        self.log.evaluation(improved)

    # -- the loop -------------------------------------------------------------------------------
    def done(self) -> bool:
        o = self.options
        if o.steps is not None and self.progress.step >= o.steps:
            return True
        # rank 0's clock
        return o.time_budget is not None and self.dist.from_main(self.progress.elapsed()) >= o.time_budget

    def request_stop(self) -> None:
        """Ask the loop to save and stop after the current step (what Ctrl-C does)."""
        self.stop_requested = True

    def train_step(self) -> float:
        """One optimizer update over grad_accum micro-batches; returns the mean loss (nats per byte)."""
        o, parts, p = self.options, self.parts, self.progress
        lr = parts.schedule.lr(p.step, self.dist.from_main(p.elapsed()) if o.time_budget else p.elapsed())
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        p.current_lr = lr
        batch = parts.source.train_batch(p.step, o.batch_size * o.grad_accum)  # (x, y, answer mask or None)
        total = 0.0
        for micro in range(o.grad_accum):
            rows = slice(
                micro * o.batch_size + self.dist.rank, (micro + 1) * o.batch_size, self.dist.world
            )  # this rank's part
            x, y, mask = (t[rows] if t is not None else None for t in batch)
            x, y = x.to(parts.device, non_blocking=True), y.to(parts.device, non_blocking=True)
            with self.dist.no_sync(parts.train_model, micro == o.grad_accum - 1):  # all-reduce once per step
                with parts.precision.autocast(parts.device):
                    logits, _ = parts.train_model(x)
                if mask is not None:  # a task: only the answer positions count
                    loss = masked_cross_entropy(logits, y, mask.to(parts.device))
                else:
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                value = self.dist.mean(loss)  # the global micro-batch's loss, the same on every rank
                if not math.isfinite(value):
                    raise self._non_finite(f"loss is {value}")
                scaled = loss / o.grad_accum
                (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
            total += value
        if parts.scaler is not None:
            parts.scaler.unscale_(parts.optimizer)
        params = [q for g in parts.optimizer.param_groups for q in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, o.clip if o.clip > 0 else float("inf"))
        if parts.scaler is not None:
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            if not torch.isfinite(norm):
                raise self._non_finite("the gradient norm is not finite")
            parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        return total / o.grad_accum

    def _non_finite(self, what: str) -> RunFailure:
        try:
            last: Path | None = resolve_checkpoint_dir(self.out / "checkpoint")
        except InputError:
            last = None
        kept = f"the last good checkpoint stays in {last}" if last else "no checkpoint was saved"
        return RunFailure(f"{what} at step {self.progress.step + 1}; stopped without saving ({kept}); try a lower --lr")

    def run(self) -> dict[str, Any]:
        """Train until --steps or --time is reached; returns the final summary."""
        self.progress.started = time.monotonic()
        previous = self._install_sigint()
        try:
            summary = self._loop()
            self.dist.barrier()  # the other ranks wait until rank 0 has written the last checkpoint
            return summary
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; a save it cut short left the previous checkpoint whole
            raise TrainingInterrupted(self._interrupted_again()) from None
        finally:
            self.report.stop()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.lock is not None:
                self.lock.release()
            self.dist.close()

    def _interrupted_again(self) -> str:
        try:
            kept = resolve_checkpoint_dir(self.out / "checkpoint")
            step = json.loads((kept / "trainer.json").read_text())["step"]
            where = f"the last saved checkpoint (step {step}) stays in {kept}; resume with: glactl train --out {self.out} --resume"
        except (InputError, OSError, ValueError, KeyError, TypeError):
            where = "no checkpoint was saved"
        return f"interrupted again at step {self.progress.step}, without waiting for a save; {where}"

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        return signal.signal(signal.SIGINT, handler)

    def _loop(self) -> dict[str, Any]:
        o, p = self.options, self.progress
        self.log.start()
        if p.step == 0 and p.start_bpb is None:
            p.start_bpb = p.last_bpb = self.evaluate()
            self.log.first_evaluation()
        use_steps = o.steps is not None
        self.report.start(o.steps if use_steps else o.time_budget, p.step if use_steps else p.elapsed(), "step")
        tokens_per_step = o.seq_len * o.batch_size * o.grad_accum
        window_t, window_tokens = time.monotonic(), 0
        loss_sum, loss_n = 0.0, 0
        resumed = self.parts.resume_dir is not None
        last_eval_step = p.step if resumed else 0
        last_save_step = p.step if resumed else None
        p.current_lr = self.parts.schedule.lr(p.step, p.elapsed())
        if resumed and self.done():
            self.log.nothing_to_train()
        while not self.done() and not self._stop_agreed():
            loss = self.train_step()
            p.step += 1
            p.tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            loss_sum += loss
            loss_n += 1
            now = time.monotonic()
            finished = self.done()
            self._stop_agreed()
            if p.step % o.log_every == 0 or finished or self.stop_requested:
                self.log.train(loss_sum / loss_n, window_tokens / max(now - window_t, 1e-9), use_steps)
                window_t, window_tokens, loss_sum, loss_n = now, 0, 0.0, 0
            if p.step % o.eval_every == 0 or finished:
                self._evaluate_and_keep_best()
                last_eval_step = p.step
            if p.step % o.save_every == 0 or finished:
                self.checkpoints.save_checkpoint()
                last_save_step = p.step
            if self.on_step is not None:
                self.on_step(self)
        if self.stop_requested:
            if last_save_step != p.step:
                self.checkpoints.save_checkpoint()
            self.dist.barrier()  # no rank exits (and makes torchrun stop the job) before rank 0 has saved
            self.report.stop()
            command = f"glactl train --out {self.out} --resume"
            raise TrainingInterrupted(
                f"interrupted at step {p.step}; checkpoint saved in {self.out / 'checkpoint'}; resume with: {command}"
            )
        if last_eval_step != p.step:
            self._evaluate_and_keep_best()
        if last_save_step != p.step:
            self.checkpoints.save_checkpoint()
        self.report.stop()
        return self.log.done()

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: under torchrun all ranks must stop after the same step."""
        self.stop_requested = self.dist.any(self.stop_requested)
        return self.stop_requested


def train(
    options: TrainOptions, console: Any | None = None, on_step: Callable[[Trainer], None] | None = None
) -> dict[str, Any]:
    """Run `glactl train` with these options; returns the training summary."""
    trainer = Trainer(options, console, on_step)
    trainer.setup()
    return trainer.run()
