"""The demo captions' words and sentence templates, one `Grammar` per language (`GRAMMARS`).

A caption is built once, without words, as a `Phrase`: a function from a grammar to text
(`noun`, `inventory`, `sentence`, ...). `pipeline.captions.demo_data` decides which phrases are
true for a scene and picks five with its random stream; rendering them in English, Spanish
or Chinese does not touch that stream, so every language describes the same images.

Spanish nouns carry a gender and colours, sizes and determiners agree with it and with the
number ("un círculo rojo", "una forma roja", "dos círculos rojos"). Chinese is written
without spaces, with the measure word 个 in its determiners ("左上角有一个红色的圆形").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import DEFAULT_LANGUAGE, DEFAULT_TOKENIZER
from pipeline.errors import UserError

GENDERS = ("m", "f")


@dataclass(frozen=True)
class Noun:
    """A noun and the gender ("m" or "f") its article and adjectives agree with."""

    singular: str
    plural: str
    gender: str = "m"


@dataclass(frozen=True)
class Grammar:
    """All words and templates of the demo captions in one language.

    Forms by agreement: `colours` (masculine, feminine, masculine plural, feminine plural),
    `sizes` and `determiners` (masculine, feminine). `templates` are `str.format` patterns
    whose fields are other phrases.
    """

    language: str  # BCP-47 tag, for data.language
    tokenizer: str  # vocab.tokenizer that splits these captions (pipeline.captions.text)
    colours: dict[str, tuple[str, str, str, str]]  # demo_data.COLOURS' names -> forms
    nouns: dict[str, Noun]  # demo_data.SHAPES and "shape"
    sizes: dict[str, tuple[str, str]]  # "large", "small"
    determiners: dict[str | int, tuple[str, str]]  # "a", "single", "one", 2, 3
    where: dict[tuple[int, int], tuple[str, str]]  # (row, column) -> two phrases for the cell
    row_where: tuple[str, str, str]  # shapes all in the top, middle, bottom row
    column_where: tuple[str, str, str]  # shapes all in the left, centre, right column
    relations: dict[str, str]  # "left", "right", "above", "below", "next" (of a to b)
    list_separator: str  # between the groups of an inventory, but the last two
    list_and: str  # before an inventory's last group
    clause_and: str  # between two located clauses
    templates: dict[str, str]


Phrase = Callable[[Grammar], str]  # a caption or part of one, in any grammar


def _same(word: str) -> tuple[str, str, str, str]:
    """One form for every gender and number."""
    return (word, word, word, word)


def _each(words: tuple[str, ...]) -> dict[tuple[int, int], tuple[str, str]]:
    """The 3x3 cells, row by row, each with two phrases from `words` (18 of them)."""
    return {(i // 3, i % 3): (words[2 * i], words[2 * i + 1]) for i in range(9)}


ENGLISH = Grammar(
    language=DEFAULT_LANGUAGE,
    tokenizer=DEFAULT_TOKENIZER,
    colours={
        "red": _same("red"),
        "green": _same("green"),
        "blue": _same("blue"),
        "yellow": _same("yellow"),
        "purple": _same("purple"),
        "white": _same("white"),
    },
    nouns={
        "circle": Noun("circle", "circles"),
        "square": Noun("square", "squares"),
        "triangle": Noun("triangle", "triangles"),
        "shape": Noun("shape", "shapes"),
    },
    sizes={"large": ("large", "large"), "small": ("small", "small")},
    determiners={
        "a": ("a", "a"),
        "single": ("a single", "a single"),
        "one": ("one", "one"),
        2: ("two", "two"),
        3: ("three", "three"),
    },
    where=_each(
        (
            "in the top left corner",
            "at the top left",
            "at the top",
            "near the top",
            "in the top right corner",
            "at the top right",
            "on the left",
            "on the left side",
            "in the center",
            "in the middle",
            "on the right",
            "on the right side",
            "in the bottom left corner",
            "at the bottom left",
            "at the bottom",
            "near the bottom",
            "in the bottom right corner",
            "at the bottom right",
        )  # fmt: skip
    ),
    row_where=("near the top", "across the middle", "near the bottom"),
    column_where=("on the left", "down the center", "on the right"),
    relations={
        "left": "to the left of",
        "right": "to the right of",
        "above": "above",
        "below": "below",
        "next": "next to",
    },
    list_separator=", ",
    list_and=" and ",
    clause_and=" and ",
    templates={
        "noun": "{det} {colour} {noun}",
        "sized": "{det} {size} {colour} {noun}",
        "located": "{noun} {where}",
        "single": "{noun} {where}",
        "there_is": "there is {noun} {where}",
        "relation": "{a} {relation} {b}",
        "line": "{inventory} {where}",
        "alone": "{noun} on a plain background",
        "including": "{count} coloured shapes including {noun}",
        "listing": "{count} shapes: {inventory}",
    },
)

SPANISH = Grammar(
    language="es",
    tokenizer="words",
    colours={
        "red": ("rojo", "roja", "rojos", "rojas"),
        "green": ("verde", "verde", "verdes", "verdes"),
        "blue": ("azul", "azul", "azules", "azules"),
        "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
        "purple": ("morado", "morada", "morados", "moradas"),
        "white": ("blanco", "blanca", "blancos", "blancas"),
    },
    nouns={
        "circle": Noun("círculo", "círculos"),
        "square": Noun("cuadrado", "cuadrados"),
        "triangle": Noun("triángulo", "triángulos"),
        "shape": Noun("forma", "formas", "f"),
    },
    sizes={"large": ("grande", "grande"), "small": ("pequeño", "pequeña")},
    determiners={
        "a": ("un", "una"),
        "single": ("un único", "una única"),
        "one": ("un", "una"),
        2: ("dos", "dos"),
        3: ("tres", "tres"),
    },
    where=_each(
        (
            "en la esquina superior izquierda",
            "arriba a la izquierda",
            "en la parte de arriba",
            "cerca de la parte superior",
            "en la esquina superior derecha",
            "arriba a la derecha",
            "a la izquierda",
            "en el lado izquierdo",
            "en el centro",
            "en el medio",
            "a la derecha",
            "en el lado derecho",
            "en la esquina inferior izquierda",
            "abajo a la izquierda",
            "en la parte de abajo",
            "cerca de la parte inferior",
            "en la esquina inferior derecha",
            "abajo a la derecha",
        )  # fmt: skip
    ),
    row_where=("cerca de la parte superior", "a lo largo del centro", "cerca de la parte inferior"),
    column_where=("a la izquierda", "por el centro", "a la derecha"),
    relations={
        "left": "a la izquierda de",
        "right": "a la derecha de",
        "above": "encima de",
        "below": "debajo de",
        "next": "junto a",
    },
    list_separator=", ",
    list_and=" y ",
    clause_and=" y ",
    templates={
        "noun": "{det} {noun} {colour}",
        "sized": "{det} {noun} {colour} {size}",
        "located": "{noun} {where}",
        "single": "{noun} {where}",
        "there_is": "hay {noun} {where}",
        "relation": "{a} {relation} {b}",
        "line": "{inventory} {where}",
        "alone": "{noun} sobre un fondo liso",
        "including": "{count} formas de colores, entre ellas {noun}",
        "listing": "{count} formas: {inventory}",
    },
)

CHINESE = Grammar(
    language="zh",
    tokenizer="characters",
    colours={
        "red": _same("红色"),
        "green": _same("绿色"),
        "blue": _same("蓝色"),
        "yellow": _same("黄色"),
        "purple": _same("紫色"),
        "white": _same("白色"),
    },
    nouns={
        "circle": Noun("圆形", "圆形"),
        "square": Noun("正方形", "正方形"),
        "triangle": Noun("三角形", "三角形"),
        "shape": Noun("形状", "形状"),
    },
    sizes={"large": ("大", "大"), "small": ("小", "小")},
    determiners={
        "a": ("一个", "一个"),
        "single": ("一个", "一个"),
        "one": ("一个", "一个"),
        2: ("两个", "两个"),
        3: ("三个", "三个"),
    },
    where=_each(
        (
            "左上角",
            "左上方",
            "顶部",
            "上方",
            "右上角",
            "右上方",
            "左边",
            "左侧",
            "中间",
            "中央",
            "右边",
            "右侧",
            "左下角",
            "左下方",
            "底部",
            "下方",
            "右下角",
            "右下方",
        )  # fmt: skip
    ),
    row_where=("在顶部排成一行", "在中间排成一行", "在底部排成一行"),
    column_where=("在左边排成一列", "在中间排成一列", "在右边排成一列"),
    relations={"left": "左边", "right": "右边", "above": "上面", "below": "下面", "next": "旁边"},
    list_separator="、",
    list_and="和",
    clause_and="，",
    templates={
        "noun": "{det}{colour}的{noun}",
        "sized": "{det}{colour}的{size}{noun}",
        "located": "{where}有{noun}",
        "single": "{where}只有{noun}",
        "there_is": "{noun}在{where}",
        "relation": "{a}在{b}{relation}",
        "line": "{inventory}{where}",
        "alone": "纯色背景上有{noun}",
        "including": "{count}彩色的形状，其中有{noun}",
        "listing": "{count}形状：{inventory}",
    },
)

GRAMMARS = {grammar.language: grammar for grammar in (ENGLISH, SPANISH, CHINESE)}


def demo_grammar(language: str) -> Grammar:
    """The grammar of `language` (a key of `GRAMMARS`); UserError for another."""
    if language not in GRAMMARS:
        raise UserError(f"the demo data speaks {', '.join(GRAMMARS)}; not {language!r}")
    return GRAMMARS[language]


def noun(colour: str, kind: str, det: str | int = "a", size: str = "") -> Phrase:
    """ "a red circle", "a large red circle" (`size`), "two red circles" (`det` 2)."""

    def render(grammar: Grammar) -> str:
        word = grammar.nouns[kind]
        gender = GENDERS.index(word.gender)
        plural = isinstance(det, int) and det > 1
        return grammar.templates["sized" if size else "noun"].format(
            det=grammar.determiners[det][gender],
            size=grammar.sizes[size][gender] if size else "",
            colour=grammar.colours[colour][gender + 2 * plural],
            noun=word.plural if plural else word.singular,
        )

    return render


def inventory(groups: list[tuple[str, str, int]]) -> Phrase:
    """ "two green triangles and a red circle" from (colour, kind, count) groups."""

    def render(grammar: Grammar) -> str:
        parts = [
            noun(colour, kind, count if count > 1 else "a")(grammar)
            for colour, kind, count in groups
        ]
        if len(parts) == 1:
            return parts[0]
        return grammar.list_separator.join(parts[:-1]) + grammar.list_and + parts[-1]

    return render


def count(n: int) -> Phrase:
    """The determiner of `n` shapes ("three" coloured shapes)."""
    return lambda grammar: grammar.determiners[n][GENDERS.index(grammar.nouns["shape"].gender)]


def where(row: int, column: int, variant: int) -> Phrase:
    """One of the two phrases for the cell (`row`, `column`)."""
    return lambda grammar: grammar.where[(row, column)][variant]


def row_where(row: int) -> Phrase:
    """Where shapes all in `row` are."""
    return lambda grammar: grammar.row_where[row]


def column_where(column: int) -> Phrase:
    """Where shapes all in `column` are."""
    return lambda grammar: grammar.column_where[column]


def relation(name: str) -> Phrase:
    """A spatial relation ("left", "right", "above", "below", "next")."""
    return lambda grammar: grammar.relations[name]


def clauses(first: Phrase, second: Phrase) -> Phrase:
    """Two clauses joined: "... and ..."."""
    return lambda grammar: first(grammar) + grammar.clause_and + second(grammar)


def sentence(template: str, **slots: Phrase) -> Phrase:
    """The grammar's `template` with each slot's phrase rendered in it."""
    return lambda grammar: grammar.templates[template].format(
        **{name: phrase(grammar) for name, phrase in slots.items()}
    )
