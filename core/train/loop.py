"""The training loop: one Accelerator loop for every model task.

    mambaverse train [CONFIG.yaml] [key=value ...] [--resume [latest|PATH]]
    accelerate launch --num_processes 2 -m mambaverse train ...

The model's task (vision, lm, vlm) picks the function that turns a batch into a loss
(:data:`mambaverse.train.tasks.TASKS`); the ``data`` section picks the dataset. Everything else is
shared: AdamW with a warm-up + cosine schedule, gradient accumulation and clipping, mixed precision,
evaluation gathered over all processes, checkpoints, metrics and the final export.

Exact resume. A resumed run must take the same steps as an uninterrupted one:
- data order: the sampler is seeded by (seed, epoch) (accelerate's seedable sampler), and the
  checkpoint records how many batches of the epoch were consumed; resuming skips them;
- randomness inside the model (dropout, drop-path): the torch generators are reseeded before each
  micro-batch from (seed, step, micro-batch, process), so it depends on where the run is, not on
  what it did before (loading a checkpoint or building an iterator draws random numbers too);
- everything else (weights, optimiser moments, schedule, gradient scaler) is in the checkpoint.
Datasets are deterministic (no random augmentation).
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext, suppress
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration, skip_first_batches
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..api import build_backbone, create_model, model_info
from ..errors import ConfigError, InputError
from ..pretrained import check_save_target, save_pretrained
from . import checkpoint
from .config import TrainConfig, to_yaml
from .data import build_dataset
from .display import Display
from .metrics import METRICS_FILE, PLOT_FILE, MetricsLog, plot_metrics
from .optim import build_optimizer, build_scheduler, freeze
from .tasks import TASKS, Outcome, auxiliary_loss

MODEL_DIR = "model"
SUMMARY_FILE = "summary.json"


def reseed(seed: int, step: int, micro_batch: int, process: int) -> None:
    """Seed every torch generator from where the run is (see the module docstring)."""
    mixed = np.random.SeedSequence([seed, step, micro_batch, process]).generate_state(1, np.uint64)
    torch.manual_seed(int(mixed[0]) & (2**63 - 1))


class StopSignals:
    """SIGTERM or a first Ctrl-C asks the loop to stop at the next step boundary (and save a
    checkpoint); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with suppress(ValueError):  # not the main thread: leave signals alone
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def evaluate(
    accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, task: str
) -> dict[str, float]:
    """Loss and accuracy over the whole test split: every process scores its shard, and
    ``gather_for_metrics`` drops the samples repeated to even out the last batch."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for batch in loader:
            outcome = TASKS[task](model, batch)
            gathered = Outcome(
                *accelerator.gather_for_metrics((outcome.loss_sum, outcome.correct, outcome.count))
            )
            totals += window_sums(gathered)
    model.train()
    loss_sum, correct, count, samples = totals.tolist()
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "samples": int(samples),
    }


def window_sums(outcome: Outcome) -> torch.Tensor:
    """(loss sum, correct, labelled positions, samples) of a batch, as one float64 vector."""
    return torch.stack(
        [
            outcome.loss_sum.detach().double().sum(),
            outcome.correct.double().sum(),
            outcome.count.double().sum(),
            torch.tensor(float(len(outcome.count)), device=outcome.count.device),
        ]
    )


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new))
    differences = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}")
    return differences


class Run:
    """One training job: built from a config, then :meth:`train` runs it to the end or a stop."""

    def __init__(self, config: TrainConfig, resume: str | None, source: str) -> None:
        self.config, self.source = config, source
        self.output = Path(config.output_dir)
        if self.output.exists() and not self.output.is_dir():
            raise ConfigError(f"{source}: output_dir: {self.output} is a file, not a directory")
        check_save_target(self.output / MODEL_DIR)  # on every process, not after training
        self.accelerator = Accelerator(
            mixed_precision=config.precision,
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=True, data_seed=config.seed
            ),
        )
        self.main = self.accelerator.is_main_process
        if self.accelerator.mixed_precision == "fp16" and self.accelerator.device.type == "cpu":
            raise ConfigError(
                f"{source}: precision: fp16 on the CPU would run in float32 (accelerate has no "
                "fp16 autocast there); use precision=bf16 or precision=no"
            )
        self.resume_from = self._checkpoint_to_resume(resume)

        info = model_info(config.model.name, count_params=False)
        self.task = info["task"]
        splits = build_dataset(config.data, self.task, source)
        _check_tokenizer(config, info, splits.model_defaults, source)
        # The data decides class count, image size, channels, vocabulary, unless the config says.
        overrides = {k: v for k, v in splits.model_defaults.items() if k in info["config"]}
        overrides.update(config.model.overrides())

        set_seed(config.seed)  # the same initial weights on every process
        model = create_model(config.model.name, **overrides)
        _check_vocabulary(model, splits.model_defaults, source)
        _check_row_lengths(model, splits, source)
        self.model_meta = model.mambaverse_config
        self.frozen = freeze(model, config.freeze)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = build_optimizer(model, config.optim)
        train_loader = DataLoader(
            splits.train,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=config.num_workers,
        )
        test_loader = DataLoader(
            splits.test,
            batch_size=config.eval.batch_size or config.batch_size,
            num_workers=config.num_workers,
        )
        self.model, self.optimizer, self.train_loader, self.test_loader = self.accelerator.prepare(
            model, optimizer, train_loader, test_loader
        )
        self.train_size, self.test_size = len(splits.train), len(splits.test)

        self.batches_per_epoch = len(self.train_loader)  # per process, after sharding
        accum = config.grad_accum_steps
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accum)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        # Stepped once per optimiser step by the loop (a prepared scheduler would be stepped once
        # per process), and saved in checkpoints through accelerate.
        self.scheduler = build_scheduler(
            self.optimizer.optimizer, self.total_steps, config.schedule
        )
        self.accelerator.register_for_checkpointing(self.scheduler)

        self.progress = checkpoint.Progress()
        if self.resume_from is not None:
            self.progress = checkpoint.load(self.accelerator, self.resume_from, self.output)
        if self.main:
            summary = self.output / SUMMARY_FILE
            if self.resume_from is None and (
                summary.exists() or (self.output / METRICS_FILE).exists()
            ):
                # An earlier run without checkpoints (those refuse a fresh run): say what goes,
                # and drop its summary now, so that none describes this run before it ends.
                print(
                    f"{self.output} holds an earlier run; its metrics, plot and model are "
                    "replaced (choose another output_dir to keep them)",
                    flush=True,
                )
                summary.unlink(missing_ok=True)
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.yaml").write_text(to_yaml(config))
        progress = self.progress
        if not progress.records_last_eval:  # an older checkpoint: its step's test line stays
            evaluated_at = progress.step
        else:
            evaluated_at = None if progress.last_eval is None else progress.last_eval["step"]
        self.metrics = MetricsLog(
            self.output, self.main, progress.step if self.resume_from else None, evaluated_at
        )
        self.display = Display(self.main, self.total_steps, self.progress.step)
        self.window = Window(self.accelerator.device)
        if self.resume_from is not None:
            # The sums and seconds since the last log line: the next one then covers the same
            # steps as an uninterrupted run's. The sums are over all processes: held by one.
            self.window.seconds = self.progress.window_seconds
            if self.progress.window_sums is not None and self.main:
                self.window.sums += torch.tensor(
                    self.progress.window_sums, dtype=torch.float64, device=self.window.device
                )
        self.lr_used = self.scheduler.get_last_lr()[0]

    def _checkpoint_to_resume(self, resume: str | None) -> Path | None:
        """Check, before any work, that the checkpoint to resume is intact (or that a fresh run
        will not mix its checkpoints with an earlier run's)."""
        if resume is None:
            earlier = checkpoint.committed(self.output)
            if not earlier:
                return None
            newest = checkpoint.damage(earlier[-1])  # each checkpoint hashed at most once
            if newest is None or any(checkpoint.damage(p) is None for p in earlier[:-1]):
                raise ConfigError(
                    f"{self.output} holds checkpoints of an earlier run ({earlier[-1].name}); "
                    f"continue it with --resume, or choose another output_dir"
                )
            raise ConfigError(
                f"{self.output} holds checkpoints of an earlier run, none of them intact "
                f"({earlier[-1].name}: {newest}); to start again, "
                f"delete {checkpoint.checkpoint_dir(self.output)} or choose another output_dir"
            )
        path = checkpoint.resolve(self.output, resume)
        _, saved_config = checkpoint.read_progress(path, self.output)
        self._warn_config_changes(yaml.safe_load(saved_config), path)
        return path

    def _warn_config_changes(self, saved: dict[str, Any], path: Path) -> None:
        changed = config_differences(saved, self.config.model_dump(mode="json"))
        if changed and self.main:
            print(
                f"resuming {path} with a changed config: {', '.join(changed)}; "
                "the result will differ from an uninterrupted run",
                flush=True,
            )

    # -- the loop ----------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to ``total_steps``, or until a stop signal (then save a checkpoint)."""
        progress = self.progress
        self._announce()
        with StopSignals() as signals:
            while progress.step < self.total_steps:
                stopped = self._train_epoch(signals)
                if stopped:
                    return self._interrupted(signals.received or signal.SIGTERM)
                if progress.batches_done == self.batches_per_epoch:
                    progress.epoch += 1
                    progress.batches_done = 0
                    if self.config.eval.every_steps is None:
                        self._evaluate()
            if progress.last_eval is None or progress.last_eval["step"] != progress.step:
                self._evaluate()
        return self._finish(progress.last_eval)

    def _train_epoch(self, signals: StopSignals) -> bool:
        """Optimiser steps over the rest of the epoch, or up to ``total_steps``; True if stopped."""
        config, accelerator, progress = self.config, self.accelerator, self.progress
        self.train_loader.set_epoch(progress.epoch)  # this epoch's shuffle, the same everywhere
        loader = (
            skip_first_batches(self.train_loader, progress.batches_done)
            if progress.batches_done
            else self.train_loader
        )
        micro_batch, group_samples = 0, 0
        group_size = self._group_size()
        self.window.start()
        for batch in loader:
            reseed(config.seed, progress.step, micro_batch, accelerator.process_index)
            last = micro_batch + 1 == group_size
            # Gradients are all-reduced once per optimiser step, on the group's last micro-batch.
            with nullcontext() if last else accelerator.no_sync(self.model):
                outcome = TASKS[self.task](self.model, batch)
                loss = outcome.mean_loss() + auxiliary_loss(accelerator.unwrap_model(self.model))
                accelerator.backward(loss / group_size)
            self.window.add(outcome)
            micro_batch += 1
            group_samples += len(outcome.count)
            if not last:
                continue

            if config.optim.clip_grad_norm is not None:
                accelerator.clip_grad_norm_(self.model.parameters(), config.optim.clip_grad_norm)
            self.optimizer.step()
            self.lr_used = self.scheduler.get_last_lr()[0]  # the step's, before it moves on
            if not accelerator.optimizer_step_was_skipped:  # an fp16 overflow skips the step
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.batches_done += micro_batch
            progress.samples_seen += group_samples * accelerator.num_processes
            micro_batch, group_samples = 0, 0
            group_size = self._group_size()

            if progress.step % config.log_every == 0 or progress.step == self.total_steps:
                self._log_train()
            self.display.step(progress.step)
            if self._due(config.eval.every_steps):
                self._evaluate()
            if self._due(config.checkpoint.every_steps):
                self._save_checkpoint()
            if self._stop_requested(signals):
                return True
            if progress.step >= self.total_steps:
                break
        self.window.pause()
        return False

    def _group_size(self) -> int:
        """Micro-batches in the next optimiser step (fewer for the last one of an epoch)."""
        left = self.batches_per_epoch - self.progress.batches_done
        return min(self.config.grad_accum_steps, left)

    def _due(self, every: int | None) -> bool:
        return every is not None and self.progress.step % every == 0

    def _stop_requested(self, signals: StopSignals) -> bool:
        """Whether any process got a stop signal; every process must agree on the same step."""
        if self.accelerator.num_processes == 1:
            return signals.received is not None
        flag = torch.tensor(float(signals.received is not None), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item())

    # -- what happens between steps ------------------------------------------------------------
    def _pause(self) -> bool:
        """Stop the training clock (evaluation and checkpoints are not training time)."""
        elapsed = self.window.pause()
        self.progress.train_seconds += elapsed or 0.0
        return elapsed is not None

    def _log_train(self) -> None:
        running = self._pause()
        loss_sum, correct, count, samples = self.accelerator.reduce(
            self.window.sums, "sum"
        ).tolist()
        seconds = self.window.reset()
        record = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "split": "train",
            "loss": loss_sum / max(count, 1),
            "accuracy": correct / max(count, 1),
            "lr": self.lr_used,
            "samples_per_s": samples / max(seconds, 1e-9),
            "train_seconds": self.progress.train_seconds,
        }
        self.metrics.write(record)
        self.display.step(
            self.progress.step,
            f"loss {record['loss']:.4f}  acc {record['accuracy']:.1%}  "
            f"{record['samples_per_s']:.0f} samples/s  lr {record['lr']:.2e}",
        )
        if running:
            self.window.start()

    def _evaluate(self) -> dict[str, Any]:
        running = self._pause()
        result = evaluate(self.accelerator, self.model, self.test_loader, self.task)
        record = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "split": "test",
            **result,
        }
        self.metrics.write(record)
        self.display.line(
            f"step {record['step']}/{self.total_steps}: test loss {record['loss']:.4f}, "
            f"accuracy {record['accuracy']:.2%} ({record['samples']} samples)"
        )
        if running:
            self.window.start()
        self.progress.last_eval = record
        return record

    def _save_checkpoint(self) -> Path:
        running = self._pause()
        self.progress.records_last_eval = True
        self.progress.window_seconds = self.window.seconds
        self.progress.window_sums = self.accelerator.reduce(
            self.window.sums.clone(), "sum"
        ).tolist()
        path = checkpoint.save(
            self.accelerator,
            self.output,
            self.progress,
            to_yaml(self.config),
            self.config.checkpoint.keep,
        )
        if running:
            self.window.start()
        return path

    def _announce(self) -> None:
        config, progress = self.config, self.progress
        frozen = f", {self.frozen} tensors frozen" if self.frozen else ""
        self.display.line(
            f"training {config.model.name} ({self.parameters:,} parameters, {self.trainable:,} "
            f"trainable{frozen}) on {config.data.name} ({self.train_size} train / "
            f"{self.test_size} test samples): {self.total_steps} steps of "
            f"{config.batch_size}×{config.grad_accum_steps}×{self.accelerator.num_processes} "
            f"samples, {self.accelerator.num_processes} process(es) on "
            f"{self.accelerator.device.type}, precision {self.accelerator.mixed_precision}"
        )
        if self.resume_from is not None:
            self.display.line(f"resumed from {self.resume_from} at step {progress.step}")

    def _interrupted(self, signum: int) -> dict[str, Any]:
        path = self._save_checkpoint()
        self.display.close()
        name = signal.Signals(signum).name
        self.display.line(
            f"stopped by {name} at step {self.progress.step}/{self.total_steps}; "
            f"checkpoint {path}; continue with the same command and --resume"
        )
        return {
            "interrupted": name,
            "signal": signum,
            "checkpoint": str(path),
            **asdict(self.progress),
        }

    def _finish(self, last_eval: dict[str, Any]) -> dict[str, Any]:
        self._pause()
        self.display.close()
        model_dir = self._export()
        summary = {
            "model": self.config.model.name,
            "data": self.config.data.name,
            "test_accuracy": last_eval["accuracy"],
            "test_loss": last_eval["loss"],
            "test_samples": last_eval["samples"],
            "steps": self.progress.step,
            "epochs": self.progress.step / self.steps_per_epoch,
            "train_seconds": self.progress.train_seconds,
            "processes": self.accelerator.num_processes,
            "model_dir": str(model_dir),
        }
        if self.main:
            plot_metrics(self.metrics.path, self.output / PLOT_FILE)
            (self.output / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        self.display.line(
            f"test accuracy {summary['test_accuracy']:.2%} (loss {summary['test_loss']:.4f}, "
            f"{summary['test_samples']} samples) after {summary['steps']} steps "
            f"({summary['epochs']:.1f} epochs, {summary['train_seconds']:.0f} s training); "
            f"model saved to {model_dir}, metrics in {self.output}"
        )
        return summary

    def _export(self) -> Path:
        """Write the trained weights with ``save_pretrained`` so ``load_pretrained`` reloads them.

        The full state dict is gathered (under FSDP each process holds a shard) and loaded into a
        freshly built copy of the model, which is what gets saved."""
        directory = self.output / MODEL_DIR
        state = self.accelerator.get_state_dict(self.model)
        if self.main:
            meta = self.model_meta
            fresh = build_backbone(meta["backbone"], meta["config"], preset=meta["model"])
            fresh.load_state_dict(state)
            save_pretrained(fresh, directory)
        self.accelerator.wait_for_everyone()
        return directory


class Window:
    """Training sums (loss, hits, labelled positions, samples) and seconds since the last log."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.seconds = 0.0
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def add(self, outcome: Outcome) -> None:
        self.sums += window_sums(outcome)

    def pause(self) -> float | None:
        """Stop the clock; the seconds since :meth:`start`, or None if it was not running."""
        if self.started is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # count the queued work, not only its launch
        elapsed = time.perf_counter() - self.started
        self.seconds += elapsed
        self.started = None
        return elapsed

    def reset(self) -> float:
        """Zero the sums; the seconds the window lasted."""
        seconds, self.seconds = self.seconds, 0.0
        self.sums.zero_()
        return seconds


def train(config: TrainConfig, resume: str | None = None, source: str = "config") -> dict[str, Any]:
    """Run a training job; returns its summary (or, if stopped by a signal, where it stopped)."""
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        run = Run(config, resume, source)
    except BaseException:  # a config refused after the Accelerator was made, say
        _restore(threads)
        raise
    try:
        summary = run.train()
        run.accelerator.wait_for_everyone()  # every process done before the group goes
        return summary
    finally:
        run.display.close()
        run.accelerator.end_training()
        _restore(threads)


def _restore(threads: int) -> None:
    torch.set_num_threads(threads)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # A run refused during setup: leave no process group behind (gloo aborts the process
        # at exit otherwise, "terminate called without an active exception").
        torch.distributed.destroy_process_group()
    # accelerate keeps its state (device, precision) in a process-wide singleton; forget it so
    # that a later train() in this process may choose other settings.
    AcceleratorState._reset_state(reset_partial_state=True)


def _check_tokenizer(
    config: TrainConfig, info: dict[str, Any], data_defaults: dict[str, Any], source: str
) -> None:
    """Token ids from a dataset's own vocabulary (bytes, say) mean nothing to a model that
    tokenises with its own tokenizer (and so takes no ``vocab_size``): refuse the pair."""
    if "vocab_size" in data_defaults and "vocab_size" not in info["config"]:
        raise ConfigError(
            f"{source}: data.name: dataset {config.data.name!r} gives token ids of its own "
            f"vocabulary ({data_defaults['vocab_size']} ids), but model {config.model.name!r} "
            "reads ids of its own tokenizer (it takes no vocab_size); use a dataset of text that "
            "the model tokenises (Cobra's: vlm_jsonl, vlm_digits)"
        )


def _check_vocabulary(model: torch.nn.Module, data_defaults: dict[str, Any], source: str) -> None:
    """Before the first step: token ids past the model's vocabulary are named, not met mid-run
    (as an index error, or on a GPU a device-side assert)."""
    needed, has = data_defaults.get("vocab_size"), getattr(model, "vocab_size", None)
    if needed is not None and has is not None and has < needed:
        raise ConfigError(
            f"{source}: the data's token ids go up to {needed - 1} (vocab_size {needed}), but "
            f"the model's vocabulary has {has} ids; raise model.vocab_size to at least {needed}, "
            "or leave it out to take the data's"
        )


def _check_row_lengths(model: torch.nn.Module, splits: Any, source: str) -> None:
    """Before the first step: rows too long for the model (one that can tell, through
    ``overlong_rows``, given a dataset that lists its texts) are named, not met mid-run."""
    overlong_rows = getattr(model, "overlong_rows", None)
    if overlong_rows is None:
        return
    for name, split in (("train", splits.train), ("test", splits.test)):
        if not hasattr(split, "texts"):
            continue
        found = overlong_rows(split.texts())
        if found:
            shown = "; ".join(found[:5]) + (
                f"; and {len(found) - 5} more" if len(found) > 5 else ""
            )
            raise InputError(
                f"{source}: {len(found)} {name} row(s) longer than the model's max_length "
                f"{model.max_length}: {shown}. Shorten them or raise model.max_length"
            )
