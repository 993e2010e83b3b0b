"""The world file: characters, users with hidden preferences, session dynamics and the planted trap.

Everything the simulator does is driven by this one YAML file (docs/simulator.md). Unknown keys and
out-of-range numbers are errors that name the field, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Weight = Annotated[float, Field(ge=-5.0, le=5.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Logit = Annotated[float, Field(ge=-10.0, le=10.0)]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=40)]

FEATURES: tuple[str, ...] = ("question", "on_topic", "persona", "compliance", "emoji", "length")
"""Response features users react to (sim/flywheel_sim/features.py computes them from the text)."""


class WorldFileError(ValueError):
    """A world file that cannot be used; the message lists every bad field by its path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Instruction(_Model):
    """A character instruction, checked by flywheel_trainer.verifiers (the trainer's verifiers)."""

    kind: str
    """One of flywheel_trainer.verifiers.INSTRUCTION_KINDS."""
    value: int | str | None = None
    """The instruction's parameter (a word limit, a required word, …); null for kinds without one."""

    @model_validator(mode="after")
    def _checkable(self) -> Instruction:
        from flywheel_trainer.verifiers import validate_instruction

        validate_instruction(self.model_dump())
        return self


class Character(_Model):
    """One AI character users chat with."""

    id: Slug
    """Stable id (logged as character.id)."""
    name: str = Field(min_length=1)
    """Display name, also what the verifiers use for name-related instructions."""
    persona: str = Field(min_length=1)
    """One-sentence persona shown in the system prompt."""
    persona_words: list[str] = Field(min_length=1)
    """Words that mark a response as in persona (the persona-consistency feature)."""
    topics: list[str] = Field(min_length=2)
    """Topics users bring to this character (one word each; the on-topic feature looks for them)."""
    instructions: list[Instruction] = Field(default_factory=list)
    """Instructions every response must follow (the steerability stream of the report)."""

    @field_validator("persona_words", "topics")
    @classmethod
    def _single_lowercase_words(cls, words: list[str]) -> list[str]:
        bad = [w for w in words if not w.isalpha() or w != w.lower()]
        if bad:
            raise ValueError(f"must be single lowercase words without digits or spaces; fix {bad}")
        return words

    def to_log(self) -> dict[str, Any]:
        """The character as the conversation log contract records it."""
        return {
            "id": self.id,
            "name": self.name,
            "persona": self.persona,
            "instructions": [i.model_dump() for i in self.instructions],
        }


class Preferences(_Model):
    """Hidden weights of one segment: logit change per unit of each response feature."""

    question: Weight = 0.0
    """Response asks the user a question back."""
    on_topic: Weight = 0.0
    """Response mentions the topic of the user's last message."""
    persona: Weight = 0.0
    """Response uses one of the character's persona words."""
    compliance: Weight = 0.0
    """Response follows every character instruction."""
    emoji: Weight = 0.0
    """Per emoji, up to `trap.emoji_cap` (the immediate pull of emojis)."""
    length: Weight = 0.0
    """Per unit of relative distance from `ideal_length` (negative: users dislike the distance)."""
    ideal_length: Annotated[int, Field(ge=1, le=200)] = 12
    """Words of the response length users like best."""


class Segment(_Model):
    """A group of users sharing preference weights."""

    name: Slug
    """Segment name."""
    share: Annotated[float, Field(gt=0.0, le=1.0)]
    """Share of the population (shares are normalised over segments)."""
    preferences: Preferences
    """Hidden preference weights."""


class Population(_Model):
    """A population of simulated people (users or internal testers)."""

    size: Annotated[int, Field(ge=1, le=1_000_000)]
    """Number of people."""
    segments: list[Segment] = Field(min_length=1)
    """Segments and their hidden preferences."""
    preference_noise: Annotated[float, Field(ge=0.0, le=3.0)] = 0.3
    """Standard deviation of each person's deviation from the segment weights."""
    favourite_characters: Annotated[int, Field(ge=1)] = 2
    """Characters each person chats with (drawn once per person)."""

    @model_validator(mode="after")
    def _unique_segments(self) -> Population:
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segment names must be unique; rename duplicates in {names}")
        return self


class Session(_Model):
    """Depth: how a session goes on turn by turn."""

    continue_bias: Logit = 0.0
    """Logit of continuing after a response with all features at zero."""
    max_turns: Annotated[int, Field(ge=1, le=50)] = 8
    """Longest session (user messages)."""
    thumb_probability: Probability = 0.2
    """Chance that the user leaves a thumb on a response."""
    thumb_bias: Logit = 0.0
    """Logit of thumbs-up (vs down) at zero appeal."""
    regenerate_bias: Logit = -3.0
    """Logit of regenerating a response at zero appeal (lower appeal raises it)."""


class Return(_Model):
    """Breadth: whether a person comes back the next day, driven by recent satisfaction."""

    bias: Logit = -0.5
    """Logit of being active on a day with neutral satisfaction memory."""
    satisfaction_weight: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    """How strongly the satisfaction memory moves the return logit."""
    memory: Probability = 0.5
    """Weight of the latest active day in the satisfaction memory (exponential moving average)."""
    decay: Probability = 0.3
    """Share of the memory lost on a day without a session."""


class Trap(_Model):
    """The planted reward-hacking trap: emojis pull immediate signals up but overuse drives people away."""

    feature: Literal["emoji"] = "emoji"
    """The trapped feature (only emojis are modelled)."""
    emoji_cap: Annotated[int, Field(ge=1, le=20)] = 4
    """Emojis beyond this add no immediate appeal."""
    threshold: Annotated[float, Field(ge=0.0, le=20.0)] = 1.0
    """Mean emojis per response a person tolerates before return suffers."""
    return_penalty: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    """Satisfaction memory lost per emoji above the threshold (mean over the day's responses)."""


class Internal(_Model):
    """Internal testers: a population that behaves differently from users (offline win rates by source)."""

    population: Population
    """Testers and their preferences."""
    continue_bias: Logit = 1.0
    """Testers probe longer sessions than users, regardless of appeal."""
    daily_active: Probability = 1.0
    """Testers test every day with this probability; their return does not follow satisfaction."""
    probe_share: Probability = 0.3
    """Share of tester messages that probe instructions (ask the character to break them)."""


class Generation0(_Model):
    """The starting policy the simulator pretrains (docs/simulator.md, 'Generation 0')."""

    dialogues: Annotated[int, Field(ge=50, le=100_000)] = 1500
    """Synthetic dialogues in the pretraining corpus."""
    violation_share: Probability = 0.5
    """Share of corpus responses that break at least one instruction."""
    question_share: Probability = 0.3
    """Share of corpus responses that ask a question back."""
    emoji_share: Probability = 0.3
    """Share of corpus responses with emojis."""
    vocab_size: Annotated[int, Field(ge=300, le=32_000)] = 1024
    """Tokenizer vocabulary (byte-level BPE); about 1000 makes every word of the world's language one token,
    so responses are short sequences (median 18 tokens) for training and sampling."""
    hidden_size: Annotated[int, Field(ge=16, le=1024)] = 64
    """Model width."""
    num_layers: Annotated[int, Field(ge=1, le=24)] = 2
    """Transformer layers."""
    steps: Annotated[int, Field(ge=1, le=100_000)] = 500
    """Optimizer steps of pretraining."""
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    """Dialogues per step."""
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-3
    """Peak learning rate (AdamW, linear decay)."""


class Serving(_Model):
    """How simulated traffic samples responses from model policies."""

    max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 40
    """Longest response in tokens (generation 0's corpus responses: 99 % within 36 with 1024-token vocabulary)."""
    temperature: Annotated[float, Field(gt=0.0, le=5.0)] = 1.0
    """Sampling temperature."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 256
    """Chats generated in one batch."""
    context_exchanges: Annotated[int, Field(ge=1, le=50)] | None = 2
    """Exchanges of the conversation a model sees besides its system prompt (null: all of them)."""
    threads: Annotated[int, Field(ge=1, le=256)] | None = 1
    """torch CPU threads while generating (null: torch's default). A tiny model gains nothing from more,
    and two threads spin against each other on a busy two-core machine."""


class World(_Model):
    """The whole simulated world."""

    version: Literal[1] = 1
    """World file format version."""
    seed: int = 0
    """Default seed of traffic and generation 0."""
    characters: list[Character] = Field(min_length=1)
    """Characters users chat with."""
    users: Population
    """Real users (source `user`)."""
    internal: Internal
    """Internal testers (source `internal`)."""
    session: Session = Field(default_factory=Session)
    """Depth dynamics."""
    returning: Return = Field(default_factory=Return, alias="return")
    """Breadth dynamics (key `return` in the file)."""
    trap: Trap = Field(default_factory=Trap)
    """The planted reward-hacking trap."""
    generation0: Generation0 = Field(default_factory=Generation0)
    """Generation 0 pretraining."""
    serving: Serving = Field(default_factory=Serving)
    """Sampling settings of model policies."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True)

    @model_validator(mode="after")
    def _unique_characters(self) -> World:
        ids = [c.id for c in self.characters]
        if len(set(ids)) != len(ids):
            raise ValueError(f"character ids must be unique; rename duplicates in {ids}")
        for pop, where in ((self.users, "users"), (self.internal.population, "internal.population")):
            if pop.favourite_characters > len(self.characters):
                raise ValueError(
                    f"{where}.favourite_characters ({pop.favourite_characters}) exceeds the "
                    f"{len(self.characters)} characters; lower it"
                )
        return self

    def character(self, character_id: str) -> Character:
        for c in self.characters:
            if c.id == character_id:
                return c
        raise KeyError(f"no character {character_id!r} in this world")

    def digest(self) -> str:
        """sha256 of the world's canonical JSON: equal worlds hash equally whatever the file's formatting."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key; remove it or fix its spelling (docs/simulator.md lists every key)"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_world(data: Any, *, source: str = "<world>") -> World:
    """Validate a parsed world mapping; raise WorldFileError naming every bad field."""
    if not isinstance(data, dict):
        raise WorldFileError(f"{source}: a world file must be a YAML mapping, got {type(data).__name__}")
    try:
        return World.model_validate(data)
    except ValidationError as exc:
        raise WorldFileError(f"{source}: invalid world file\n{_format_errors(exc)}") from exc


def load_world(path: str | Path) -> World:
    """Read and validate a world file (YAML)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise WorldFileError(f"{path}: not valid YAML: {exc}") from exc
    return parse_world(data, source=str(path))


DEFAULT_WORLD = Path(__file__).resolve().parents[2] / "examples" / "local" / "world.yaml"
"""The world of the embedded default (`flywheel run examples/local/gen1.yaml`)."""
