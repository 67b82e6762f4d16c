"""A bibliography whose labels read like the citations in the text: "[Ioffe and Szegedy, 2015]".

``bibtex_reference_style: author_year`` makes the in-text citations author-year, but the list at the end
keeps pybtex's default labels ("[IS15]"), so a reader cannot match the two. This registers a pybtex
formatting style ``authoryear`` (``bibtex_default_style`` in ``_config.yml``) whose labels are built the
way sphinxcontrib-bibtex builds the in-text ones (one author: "Ioffe"; two: "Ioffe and Szegedy"; more:
"LeCun et al."; no author: the editor, else the title; no year: "n.d."), sorted by author (or title) and
year. DOIs, arXiv identifiers and URLs become links, as in pybtex's ``unsrt`` style.
"""

from __future__ import annotations

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle


def _last_names(person) -> str:
    return " ".join(str(Text(*person.rich_prelast_names, *person.rich_last_names).render_as("text")).split())


def _who(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor")
    if persons:
        names = [_last_names(p) for p in persons]
        if len(names) == 1:
            return names[0]
        if len(names) == 2:
            return f"{names[0]} and {names[1]}"
        return f"{names[0]} et al."
    return str(Text.from_latex(entry.fields.get("title", entry.key)).render_as("text"))


def author_year_label(entry) -> str:
    return f"{_who(entry)}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield author_year_label(entry)


class AuthorYearSortingStyle(BaseSortingStyle):
    def sorting_key(self, entry):
        return (_who(entry).lower(), entry.fields.get("year", ""), entry.fields.get("title", "").lower())


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"
    default_sorting_style = "authoryear"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.sorting", "authoryear", AuthorYearSortingStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
