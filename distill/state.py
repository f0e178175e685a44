"""A training run's state: what ``save_state`` writes (the student, losses, optimizer, schedule, loss scaler, step
counters and every rank's random state) and ``load_state`` checks and restores for an exact resume.
:class:`~mobileclip.distill.train.Trainer` inherits it."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from mobileclip.checkpoint import save_checkpoint, unwrap
from mobileclip.errors import TrainingError
from mobileclip.files import disk_full, replace_dir, temp_dir_for

from .blocks import lr_factor
from .rundir import find_resume_dir


class TrainerState:
    """The state methods of :class:`~mobileclip.distill.train.Trainer` (which sets every attribute they read:
    ``student``, ``losses``, ``opt``, ``sched``, ``scaler``, ``step``, ``bad_steps``, ``empty_steps``,
    ``skipped_images``, ``rank_rng``, ``env``, ``device``, ``cfg``, ``out``)."""

    def state_dict(self) -> dict:
        return {
            "step": self.step, "bad_steps": self.bad_steps, "skipped_images": self.skipped_images,
            "empty_steps": self.empty_steps, "model": unwrap(self.student).state_dict(), "losses": self.losses.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rank_rng": self.rank_rng if self.rank_rng is not None else [self._rng_state()],
        }

    def _rng_state(self) -> dict:
        """This rank's random state: the CPU generator and its own GPU's."""
        cuda = self.device.type == "cuda"
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}

    def gather_rng(self) -> None:
        """Every rank's random state, collected on rank 0 for the next :meth:`save_state` (a collective: all
        ranks call it). Dropout and drop-path draw from each rank's own generator, so exact resume needs all."""
        state = self._rng_state()
        if self.env.world == 1:
            self.rank_rng = [state]
            return
        cpu = {k: (v.cpu() if v is not None else None) for k, v in state.items()}
        states = [None] * self.env.world
        dist.all_gather_object(states, cpu)
        self.rank_rng = states

    def save_state(self, name: str = "last") -> Path:
        """Atomically replace ``out/<name>/`` with the full training state."""
        tmp = temp_dir_for(self.out / name)
        try:
            torch.save(self.state_dict(), tmp / "train_state.pt")
            save_checkpoint(self.student, tmp / "student")
            (tmp / "train_config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            return replace_dir(tmp, self.out / name)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)   # a full disk or an interrupt leaves no temporary
            err = disk_full(e, self.out / name)
            if err is not e:
                raise err from e
            raise

    def load_state(self, path: Path) -> None:
        path = find_resume_dir(path)
        f = path / "train_state.pt"
        try:
            state = torch.load(f, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as e:
            raise TrainingError(f"cannot resume: {str(f)!r} holds Python objects other than tensors and numbers, "
                                "so it was not loaded (it was not written by this trainer)") from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise TrainingError(f"cannot resume: {str(f)!r} is truncated or damaged ({str(e).splitlines()[0][:120]}); "
                                "resume from an intact copy or start a new run") from e
        keys = ("step", "bad_steps", "skipped_images", "model", "losses", "optimizer", "scheduler", "scaler",
                "torch_rng", "cuda_rng")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise TrainingError(f"cannot resume: {str(f)!r} is not a training state of this trainer (missing "
                                f"{[k for k in keys if not isinstance(state, dict) or k not in state][:4]})")
        try:
            unwrap(self.student).load_state_dict(state["model"])
            self.losses.load_state_dict(state["losses"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"cannot resume: the state in {str(f)!r} does not fit this run's student, losses or "
                                f"optimizer ({str(e).splitlines()[0][:160]}); resume with the run's own config") from e
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rank_rng")   # absent in states saved before per-rank random states were kept
        if isinstance(ranks, list) and not all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor)
                                               for r in ranks):
            raise TrainingError(f"cannot resume: the per-rank random states in {str(f)!r} are damaged (rank_rng "
                                "holds something other than each rank's generator state); resume from an intact copy")
        if isinstance(ranks, list) and len(ranks) == self.env.world:
            mine = ranks[self.env.rank]
            torch.set_rng_state(mine["torch"].cpu())
            if mine.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].cpu(), self.device)
        elif self.env.world == 1 or not isinstance(ranks, list):
            torch.set_rng_state(state["torch_rng"].cpu())
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        if isinstance(ranks, list) and len(ranks) != self.env.world and self.env.main:
            # the data of every step is the same whatever the number of processes; dropout's draws are not
            print(f"resuming on {self.env.world} process(es) a run saved by {len(ranks)}: every step sees the same "
                  "data, but dropout and drop-path draw from other random streams than the run would have "
                  "(resume on the same number of processes for an exact replay)")
        self.step, self.bad_steps = int(state["step"]), int(state["bad_steps"])
        # The learning rate follows this config's schedule (it may extend the run's `steps`).
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs):
            group["lr"] = base * lr_factor(self.step, self.cfg)
        self.skipped_images = list(state["skipped_images"])
        self.empty_steps = int(state.get("empty_steps", 0))   # absent in states saved before it was counted
        if self.env.main:
            print(f"resumed from {path} at step {self.step}")
