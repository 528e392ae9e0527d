"""The winner manifest: the contract between tuning, which writes it, and serving and fine-tuning, which read it.

One typed, versioned record per config (`GenrecConfig.winner_path()`): which checkpoint won a sweep, how it was
chosen (validation only), its one reading of the test split beside popularity's, what it cost, its whole config
(a GenrecConfig; in the file, the config tree a config file holds, without the serve token), and every trial
(serving multiplexes the finished ones). A manifest that does not match this model is refused with the file and the
field named, never half-read.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genrec.config import GenrecConfig, migrate, without_secrets
from genrec.errors import GenrecError
from genrec.storage import Store

# Bumped when a field changes meaning or goes away; a reader refuses other versions by name.
WINNER_SCHEMA_VERSION = 1


class WinnerError(GenrecError, ValueError):
    """A winner manifest that is missing or cannot be read as this genrec writes it."""


class WinnerTrial(BaseModel):
    """One trial's row: what it trained, how it ended, its kept epoch's validation figures (extra fields: the
    figures, a search's sampled values, the rank)."""

    model_config = ConfigDict(extra="allow")

    preset: str
    max_seq_len: int
    seed: int = 0
    window_shift_h: float = 0.0
    status: Literal["ok", "failed"]
    error: str | None = None
    checkpoint: str | None = None  # the kept epoch's checkpoint, as a URI of the storage (None when failed)
    warm: bool = False  # started from the previous window's retrain (tune.warm_start)

    @property
    def model_id(self) -> str:
        """The id serving routes a request's `model` to (a warm-started retrain's ends in -warm)."""
        return f"{self.preset}-len{self.max_seq_len}-s{self.seed}-w{self.window_shift_h:g}" + ("-warm" if self.warm
                                                                                              else "")


class WinnerCost(BaseModel):
    """What the winning trial's training cost, whole (its patience epochs after the kept one included)."""

    model_config = ConfigDict(extra="forbid")

    wall_time_s: float = Field(ge=0.0)
    events_processed: int = Field(ge=0)
    # The trainer's own count (genrec.build.model_flops: the backbone per input token, decoding per target).
    train_flops: float | None = Field(None, ge=0.0)


class WinnerManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = WINNER_SCHEMA_VERSION
    sweep: str
    experiment: str  # the Tune folder, as a URI of the storage
    created_at: float
    selection: str  # how the winner was chosen, in words
    metric: str  # the validation figure it was ranked by, e.g. valid_ndcg@10
    checkpoint: str
    preset: str
    max_seq_len: int
    seed: int
    metrics: dict[str, float]  # validation figures of the kept epoch (and best_epoch, loss)
    values: dict[str, Any] | None = None  # a search's sampled hyper-parameters (None in a grid)
    test: dict[str, float] | None = None  # the test split, read once for the winner
    test_popularity: dict[str, float] | None = None  # popularity on the same test requests: the bar
    cost: WinnerCost
    config: GenrecConfig  # the winner's whole config (secrets stripped when written)
    trials: list[WinnerTrial]

    @field_validator("config", mode="before")
    @classmethod
    def _current_config_version(cls, value: Any) -> Any:
        # A manifest of an earlier genrec holds its config in that genrec's config version (1: no `version` key).
        return migrate(value, "config") if isinstance(value, dict) else value

    def served_models(self) -> dict[str, str]:
        """Model id -> checkpoint of every finished trial (the winner's own id among them)."""
        return {t.model_id: t.checkpoint for t in self.trials if t.status == "ok" and t.checkpoint}


def parse_winner(text: str, where: str) -> WinnerManifest:
    """A manifest from its JSON text; `where` (the file's URI) names it in every error."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise WinnerError(f"{where}: not readable JSON ({exc}); run the sweep again to rewrite it") from None
    if isinstance(raw, dict) and raw.get("schema_version", WINNER_SCHEMA_VERSION) != WINNER_SCHEMA_VERSION:
        raise WinnerError(f"{where}: schema_version {raw['schema_version']!r}, this genrec reads "
                          f"{WINNER_SCHEMA_VERSION}; run the sweep again with this genrec to rewrite it")
    try:
        return WinnerManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(the whole file)"
        message = first["msg"].removeprefix("Value error, ")
        raise WinnerError(f"{where}: field {field}: {message} ({exc.error_count()} problem"
                          f"{'s' if exc.error_count() > 1 else ''}); run the sweep again to rewrite it") from None


def read_winner(store: Store, path: str) -> WinnerManifest:
    """The manifest at `path` in `store`."""
    if not store.is_file(path):
        raise WinnerError(f"{store.uri(path)}: no winner manifest; run `genrec sweep --config CONFIG` (or "
                          "`python -m tuning.sweep`) first, or name a checkpoint folder instead")
    return parse_winner(store.read_text(path), store.uri(path))


def write_winner_manifest(store: Store, path: str, manifest: WinnerManifest) -> None:
    """Atomically (Store.write_bytes), as every genrec write; the config as its JSON tree, never with the serve token
    (the file is read by anyone with the storage)."""
    public = manifest.model_copy(update={"config": without_secrets(manifest.config)})
    store.write_json(path, public.model_dump(mode="json"))
