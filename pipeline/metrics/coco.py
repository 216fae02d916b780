"""Caption metrics computed the way coco-caption (pycocoevalcap) computes them.

`score_captions` tokenises references and predictions with pycocoevalcap's PTBTokenizer, then runs
Bleu(4), Meteor(), Rouge() and Cider() on every predicted image against ALL of its references, exactly
like `COCOEvalCap.evaluate` (SPICE is left out: it downloads models). Scores are on pycocoevalcap's
0-1 scale (CIDEr may exceed 1); `format_scores` shows them x100. `CaptionScorer` does the same for
several prediction sets with one METEOR process (its start costs about 10 s).

Java matters twice: the PTB tokenizer and METEOR are both Java programs. Without a working `java`
(none on PATH, or one that fails to start), or with `use_java=False`:
- the tokenizer falls back to `simple_tokenize`: nltk's Treebank-style tokenizer (what the Java PTB
  tokenizer is) followed by coco-caption's post-processing (lowercase, brackets as "-lrb-" ...,
  drop the punctuation tokens). It matches PTB on ordinary captions (99.99% of Flickr8k's 40,460
  captions), but not on every rare construction ("AT&T", "5:30pm", "!!!", "a=b"), so
  BLEU/ROUGE-L/CIDEr may shift slightly compared with a Java run; `MetricReport.tokenizer` says which
  tokenizer was used ("ptb" or "simple");
- METEOR is reported as None, with the reason in `MetricReport.notes`.
The same holds where pycocoevalcap's Java files (`JAVA_FILES`) are missing, as in the package
folder `make gpu-bundle` carries to a GPU machine.
A Java failure in the middle of a run never crashes scoring: it becomes a note.

All of this is for English (`data.language` "en" or "en-*") split into words. Captions in other
languages (or split into characters) are scored on the run's own tokens (`vocab.tokenizer`, see
pipeline.captions.text; no Java): BLEU, ROUGE-L and CIDEr as above, METEOR unavailable with a note
(pycocoevalcap's METEOR 1.5 ships English paraphrase data only); `MetricReport.tokenizer` is then
"words" or "characters".
"""

import contextlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pycocoevalcap.meteor.meteor as pycoco_meteor
import pycocoevalcap.tokenizer.ptbtokenizer as pycoco_ptb
from nltk.tokenize import NLTKWordTokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

from pipeline.captions.text import tokenize
from pipeline.config import DEFAULT_LANGUAGE, DEFAULT_TOKENIZER

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
BLEU_NAMES = METRIC_NAMES[:4]
JAVA_PROBE_TIMEOUT_S = 20
JAVA_FILES = (  # what pycocoevalcap's Java helpers (PTB tokenizer, METEOR) read beside their modules
    Path(pycoco_ptb.__file__).with_name(pycoco_ptb.STANFORD_CORENLP_3_4_1_JAR),
    Path(pycoco_meteor.__file__).with_name(pycoco_meteor.METEOR_JAR),
    Path(pycoco_meteor.__file__).parent / "data" / "paraphrase-en.gz",
)

DISPLAY_NAMES = {
    "Bleu_1": "BLEU-1",
    "Bleu_2": "BLEU-2",
    "Bleu_3": "BLEU-3",
    "Bleu_4": "BLEU-4",
    "METEOR": "METEOR",
    "ROUGE_L": "ROUGE-L",
    "CIDEr": "CIDEr",
}
_TREEBANK = NLTKWordTokenizer()  # nltk's Treebank-style tokenizer: needs no downloaded data
# A word's final period is split off, as PTB does, unless it is an abbreviation ("u.s.", "j.").
_ABBREVIATION = re.compile(r"(?:[^\W\d_]\.)+|(?:mr|mrs|ms|dr|st|jr|sr|vs)\.", re.IGNORECASE)
_ACRONYM_STEM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "U.S" + "." where nltk cut "U.S."


class JavaFailure(RuntimeError):
    """A Java helper of pycocoevalcap (PTB tokenizer or METEOR) could not run."""


@dataclass
class MetricReport:
    """Scores of one evaluation, with notes on anything that could not be computed."""

    # pycocoevalcap names -> 0-1 scale (CIDEr may exceed 1); None = unavailable
    scores: dict[str, float | None]
    # why something is missing, e.g. "METEOR unavailable: java not found on PATH ..."
    notes: list[str] = field(default_factory=list)
    # the tokens scored: "ptb" (pycocoevalcap PTBTokenizer, needs java), "simple" (its
    # pure-Python stand-in), or the run's tokenizer ("words", "characters") for other languages
    tokenizer: str = "ptb"
    # image key -> that image's CIDEr (its mean is `scores["CIDEr"]`); empty without CIDEr
    per_image_cider: dict[str, float] = field(default_factory=dict)


def java_available() -> bool:
    """True when `java` is on PATH and `java -version` runs successfully."""
    return _java_problem() is None


def _java_problem() -> str | None:
    """Why Java cannot be used, or None when `java -version` works and pycocoevalcap's
    `JAVA_FILES` are there."""
    java = shutil.which("java")
    if java is None:
        return "java not found on PATH (install a JRE, e.g. openjdk-17-jre-headless)"
    missing = [path.name for path in JAVA_FILES if not path.is_file()]
    if missing:
        return f"pycocoevalcap's Java files are missing: {', '.join(missing)}"
    try:
        probe = subprocess.run(
            [java, "-version"], capture_output=True, timeout=JAVA_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"java at {java} does not run ({exc})"
    if probe.returncode != 0:
        detail = _tail(probe.stderr.decode(errors="replace"))
        return f"java at {java} fails (exit {probe.returncode}: {detail})"
    return None


def simple_tokenize(caption: str) -> str:
    """Pure-Python stand-in for PTBTokenizer + coco-caption punctuation removal (space-joined
    tokens): nltk's Treebank-style tokens, periods and "'n'" as PTB has them, lowercased,
    brackets as "-lrb-" ..., pycocoevalcap's PUNCTUATIONS dropped."""
    tokens = _TREEBANK.tokenize(caption.replace("\n", " "), convert_parentheses=True)
    lowered = (token.lower() for token in _as_ptb(tokens))
    return " ".join(token for token in lowered if token not in PUNCTUATIONS)


def _as_ptb(tokens: list[str]) -> list[str]:
    """nltk's tokens where PTB's differ on captions: a word's final period is its own token
    unless the word is an abbreviation ("dog." -> "dog", "."; "u.s." stays, also at the end of
    a caption, where nltk cuts it), and "'n'" ("rock 'n' roll") is one token."""
    out: list[str] = []
    for token in tokens:
        previous = out[-1] if out else ""
        if (token == "." and _ACRONYM_STEM.fullmatch(previous)) or (
            token == "'" and previous.lower() == "'n"
        ):
            out[-1] += token
        elif token.endswith(".") and not token.endswith("..") and len(token) > 1:
            out += [token] if _ABBREVIATION.fullmatch(token) else [token[:-1], "."]
        else:
            out.append(token)
    return out


def uses_ptb(language: str, tokenizer: str) -> bool:
    """Whether captions are scored as coco-caption scores them: English (`language` "en" or
    "en-*") in words, on PTB tokens (`simple_tokenize`'s without Java), with METEOR."""
    return language.lower().split("-")[0] == "en" and tokenizer != "characters"


def evaluation_tokens(
    caption: str, language: str = DEFAULT_LANGUAGE, tokenizer: str = DEFAULT_TOKENIZER
) -> list[str]:
    """The tokens a caption is scored on without Java (the SCST reward's): `simple_tokenize`'s
    when `uses_ptb`, else the run's own tokenizer's."""
    if uses_ptb(language, tokenizer):
        return simple_tokenize(caption).split()
    return tokenize(caption, tokenizer)


def score_captions(
    references: dict[str, list[str]],
    predictions: dict[str, str],
    metrics: Sequence[str] = METRIC_NAMES,
    use_java: bool | None = None,
    language: str = DEFAULT_LANGUAGE,
    tokenizer: str = DEFAULT_TOKENIZER,
) -> MetricReport:
    """Score each prediction against all references of its image, as coco-caption does.

    `references` and `predictions` must have exactly the same keys (else ValueError). `use_java`:
    None = use Java when `java_available()`, False = never (simple tokenizer, no METEOR), True = try
    Java even if the probe fails (failures still become notes). `language` (`data.language`) and
    `tokenizer` (`vocab.tokenizer`): captions other than English words are scored on the run's
    own tokens, without METEOR (see `CaptionScorer.score`). To score several prediction sets
    (a model and its baseline, several runs), a `CaptionScorer` starts METEOR only once.
    """
    with CaptionScorer(metrics, use_java) as scorer:
        return scorer.score(references, predictions, language, tokenizer)


class CaptionScorer:
    """`score_captions` for many prediction sets, with one METEOR java process for all of them.

    METEOR's start (the JVM and its paraphrase table) takes about 10 s, far more than scoring a
    split; the process starts here, so it loads while the caller decodes, and serves every
    `score` call until `close()` (or the end of a `with` block). A METEOR failure becomes a note
    and is repeated for later calls, as `score_captions` reports it.
    """

    def __init__(self, metrics: Sequence[str] = METRIC_NAMES, use_java: bool | None = None):
        _check_metrics(metrics)
        self.metrics = tuple(metrics)
        self.java_problem = _java_problem() if use_java is None else None
        if use_java is False:
            self.java_problem = "Java disabled by the caller (use_java=False)"
        self._meteor: _ClosableMeteor | None = None
        self._meteor_problem: str | None = None  # why METEOR failed, once it has
        if "METEOR" in self.metrics and self.java_problem is None:
            try:
                self._meteor = _ClosableMeteor()
            except OSError as exc:
                self._meteor_problem = (
                    f"java failed ({type(exc).__name__}: {exc}; java did not start)"
                )

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR process (safe to call twice)."""
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def score(
        self,
        references: dict[str, list[str]],
        predictions: dict[str, str],
        language: str = DEFAULT_LANGUAGE,
        tokenizer: str = DEFAULT_TOKENIZER,
    ) -> MetricReport:
        """This scorer's metrics of `predictions` against `references` (same keys).

        English captions in words (`uses_ptb(language, tokenizer)`) are scored as coco-caption
        does; others on the run's `tokenizer`'s tokens (space-joined, no Java) with METEOR
        unavailable: pycocoevalcap's METEOR 1.5 has English paraphrase data only.
        """
        _check_inputs(references, predictions)
        notes: list[str] = []
        if uses_ptb(language, tokenizer):
            gts, preds_tok, scoring = _tokenize(references, predictions, self.java_problem, notes)
        else:
            gts, preds_tok = _own_tokens(references, predictions, language, tokenizer)
            scoring = tokenizer
        res = {key: [preds_tok[key][0]] for key in gts}  # {id: [tokenized prediction]}
        scores: dict[str, float | None] = {}
        per_image: dict[str, float] = {}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints BLEU stats
            if any(name in self.metrics for name in BLEU_NAMES):
                bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
                scores.update(zip(BLEU_NAMES, (float(value) for value in bleu), strict=True))
            if "METEOR" in self.metrics:
                unscorable = _meteor_language_problem(language, tokenizer)
                ptb_failed = scoring == "simple" and self.java_problem is None
                scores["METEOR"] = self._meteor_score(gts, res, unscorable, ptb_failed, notes)
            if "ROUGE_L" in self.metrics:
                scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
            if "CIDEr" in self.metrics:
                corpus, each = Cider().compute_score(gts, res)  # each: one score per key of gts
                scores["CIDEr"] = float(corpus)
                per_image = dict(zip(gts, (float(value) for value in each), strict=True))
        ordered = {name: scores[name] for name in METRIC_NAMES if name in self.metrics}
        return MetricReport(
            scores=ordered, notes=notes, tokenizer=scoring, per_image_cider=per_image
        )

    def _meteor_score(
        self,
        gts: dict[str, list[str]],
        res: dict[str, list[str]],
        unscorable: str | None,
        ptb_failed: bool,
        notes: list,
    ) -> float | None:
        """METEOR from the running java scorer, or None with a note saying why not
        (`unscorable`: why METEOR cannot score these captions at all)."""
        problem = unscorable or self.java_problem or self._meteor_problem
        if problem is None and ptb_failed:
            problem = "the PTB tokenizer (java) failed"
        if problem is None and self._meteor is None:
            problem = "the scorer was closed"
        if problem is None:
            try:
                score, _ = self._meteor.compute_score(gts, res)
                return float(score)
            except (OSError, ValueError) as exc:  # broken pipe / unparsable output of a dead java
                detail = _tail(self._meteor.close())
                self._meteor = None
                problem = f"java failed ({type(exc).__name__}: {exc}; {detail})"
                self._meteor_problem = problem
        notes.append(f"METEOR unavailable: {problem}")
        return None


def format_scores(scores: dict[str, float | None]) -> str:
    """One-line summary such as 'BLEU-1 66.7  BLEU-4 19.1  METEOR n/a  CIDEr 40.2 (scores x100)'."""
    parts = []
    for name, value in scores.items():
        label = DISPLAY_NAMES.get(name, name)
        parts.append(f"{label} {'n/a' if value is None else f'{100 * value:.1f}'}")
    return "  ".join(parts) + " (scores ×100)"


def _check_metrics(metrics: Sequence[str]) -> None:
    """Raise ValueError unless `metrics` is a non-empty list of METRIC_NAMES."""
    unknown = [name for name in metrics if name not in METRIC_NAMES]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_NAMES)}")


def _check_inputs(references: dict[str, list[str]], predictions: dict[str, str]) -> None:
    """Raise ValueError unless both dicts cover exactly the same images and all inputs are usable."""
    if not predictions:
        raise ValueError("no predictions to score")
    missing_refs = [key for key in predictions if key not in references]
    missing_preds = [key for key in references if key not in predictions]
    if missing_refs or missing_preds:
        raise ValueError(
            f"references and predictions must cover the same images: {len(missing_refs)} "
            f"prediction(s) without references (first: {_first(missing_refs)}), {len(missing_preds)} "
            f"reference set(s) without a prediction (first: {_first(missing_preds)})"
        )
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(
            f"{len(empty)} image(s) without reference captions (first: {_first(empty)})"
        )
    bad = [key for key, text in predictions.items() if not isinstance(text, str)]
    bad += [key for key, refs in references.items() if not _is_caption_list(refs)]
    if bad:
        raise ValueError(f"captions must be strings and references lists of strings: {_first(bad)}")


def _is_caption_list(refs) -> bool:
    """True for a list/tuple of strings."""
    return isinstance(refs, list | tuple) and all(isinstance(text, str) for text in refs)


def _first(keys: list, count: int = 5) -> str:
    """The first few keys, for error messages."""
    return ", ".join(repr(key) for key in keys[:count]) or "none"


def _tokenize(
    references: dict[str, list[str]],
    predictions: dict[str, str],
    java_problem: str | None,
    notes: list[str],
) -> tuple[dict[str, list[str]], dict[str, list[str]], str]:
    """Tokenize both sides with PTB when Java works, else with `simple_tokenize` (and a note)."""
    if java_problem is None:
        try:
            return *_ptb_tokenize(references, predictions), "ptb"
        except JavaFailure as exc:
            java_problem = str(exc)
    notes.append(f"PTB tokenizer unavailable ({java_problem}): used the simple Python tokenizer")
    return *_own_tokens(references, predictions), "simple"


def _own_tokens(
    references: dict[str, list[str]],
    predictions: dict[str, str],
    language: str = DEFAULT_LANGUAGE,
    tokenizer: str = DEFAULT_TOKENIZER,
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Both sides as space-joined `evaluation_tokens` (pure Python)."""

    def joined(text: str) -> str:
        return " ".join(evaluation_tokens(text, language, tokenizer))

    refs = {key: [joined(text) for text in texts] for key, texts in references.items()}
    preds = {key: [joined(text)] for key, text in predictions.items()}
    return refs, preds


def _meteor_language_problem(language: str, tokenizer: str) -> str | None:
    """Why METEOR cannot score these captions (None for English words)."""
    if uses_ptb(language, tokenizer):
        return None
    return (
        f"pycocoevalcap's METEOR 1.5 has English paraphrase data only (data.language = "
        f"{language!r}, vocab.tokenizer = {tokenizer!r})"
    )


def _ptb_tokenize(
    references: dict[str, list[str]], predictions: dict[str, str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Run pycocoevalcap's PTBTokenizer once over references and predictions; JavaFailure if it breaks."""
    # One Java start for both sides; PTB tokenizes line by line, so results equal two separate calls.
    batch = {("ref", key): [{"caption": c} for c in texts] for key, texts in references.items()}
    batch |= {("pred", key): [{"caption": text}] for key, text in predictions.items()}
    with _captured_stderr() as stderr:  # java prints "PTBTokenizer tokenized N tokens ..." to fd 2
        try:
            tokenized = PTBTokenizer().tokenize(batch)
        except OSError as exc:
            raise JavaFailure(f"PTB tokenizer could not start java: {exc}") from exc
        if any(len(tokenized.get(key, ())) != len(batch[key]) for key in batch):
            raise JavaFailure(f"PTB tokenizer returned incomplete output ({_tail(stderr())})")
    refs = {key: tokenized[("ref", key)] for key in references}
    preds = {key: tokenized[("pred", key)] for key in predictions}
    return refs, preds


@contextlib.contextmanager
def _captured_stderr() -> Iterator:
    """Send file descriptor 2 (where child processes write) to a temp file; yields a reader for it."""
    with tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no usable stderr: nothing to silence
            yield lambda: ""
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: _read_all(sink)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _read_all(sink) -> str:
    """Everything written so far to a temp file."""
    sink.seek(0)
    return sink.read().decode(errors="replace")


def _tail(text: str) -> str:
    """Last non-empty line of a child's stderr, for notes."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


class _ClosableMeteor(Meteor):
    """pycocoevalcap's Meteor with a close() that cannot deadlock and always reaps the java child.

    Meteor.__del__ takes a lock that compute_score leaves held when it fails half-way; this close()
    kills and waits the process without the lock, closes its pipes, and is safe to call twice.
    """

    def close(self) -> str:
        """Kill and reap the java process, close its pipes; returns what it wrote to stderr."""
        process = getattr(self, "meteor_p", None)  # absent when Popen itself failed
        if process is None or process.stdin.closed:
            return ""
        process.kill()
        process.wait()
        errors = ""
        with contextlib.suppress(OSError, ValueError):
            errors = process.stderr.read().decode(errors="replace")  # EOF: the process is dead
        for stream in (process.stdin, process.stdout, process.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        return errors

    def __del__(self) -> None:
        self.close()
