"""Keep the documentation's references true.

1. Citations. Code and docs cite a section as `<file>.md, "<heading>"`, e.g. docs/design.md
   followed by a comma and the quoted heading text (the comma may be missing, and the quoted
   text may wrap onto the next line, also onto a `#` comment line). Every such citation in
   ifnd_tf/, bench/, scripts/, tests/, examples/, README.md, BUILD_NOTES.md, the Makefile and
   docs/ must name an existing Markdown file and a heading of it. The file is found as written
   relative to the citing file's folder, then to the repository root, then to docs/ (so
   docs/results.md may cite `design.md, "..."`).
   Heading match: the text after the #'s (any level, outside fenced code), exactly. A citation
   may also be a PREFIX of a heading, ending at a word boundary, when exactly one heading of
   that file starts with it (e.g. "Shared pass" for "Shared pass (`--cluster_features`)");
   an ambiguous prefix fails. Headings within a cited file must be unique, so that every
   citation names one section. Markdown links `(<file>.md#anchor)` must hit a heading's
   GitHub anchor.
2. README.md: at most 150 lines, 12,000 characters, and no line over 100 characters.
3. Flags (e2e): every `python -m ifnd_tf.<module> ...` command in README's fenced code blocks
   uses only flags that module knows, and every flag in the first column of README's tables is
   one `ifnd_tf.train` knows. The known flags are read from `python -m ifnd_tf.<module>
   --helpfull` (one subprocess per module, run in parallel), which works wherever the flags are
   defined (ifnd_tf/config.py or ifnd_tf/cli.py).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("ifnd_tf", "bench", "scripts", "tests", "examples", "docs", "flags")
SCANNED_FILES = ("README.md", "BUILD_NOTES.md", "Makefile")
SCANNED_SUFFIXES = {".py", ".md", ".cfg", ".txt", ".toml", ""}

# <path>.md, "<heading>": the heading may wrap once (also onto a comment line).
CITATION = re.compile(
    r'(?<![\w/."\'-])((?:\.\./)?(?:[\w-]+/)*[\w-]+\.md)(?:,[ \t]*|[ \t]+|,?(?=\n))'
    r'(?:\n[ \t]*(?:#[ \t]*)?)?'
    r'"([^"\n]{1,200}(?:\n[ \t]*(?:#[ \t]*)?[^"\n]{1,200})?)"')
LINK = re.compile(r'\]\(((?:\.\./)?(?:[\w-]+/)*[\w-]+\.md)#([^)\s]+)\)')
FENCE = re.compile(r"^\s*```")


def _scanned_files():
    for name in SCANNED_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for folder in SCANNED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")) if (ROOT / folder).is_dir() else ():
            if (path.is_file() and path.suffix in SCANNED_SUFFIXES and path != Path(__file__)
                    and "__pycache__" not in path.parts and "results" not in path.parts):
                yield path


def headings(path: Path) -> list:
    """Heading texts of a Markdown file, outside fenced code blocks."""
    found, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip().rstrip("#").strip())
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def resolve(cited: str, citing: Path):
    for base in (citing.parent, ROOT, ROOT / "docs"):
        candidate = (base / cited).resolve()
        if candidate.is_file():
            return candidate
    return None


def matches(cited: str, heads: list) -> bool:
    if cited in heads:
        return True
    starting = [h for h in heads
                if h.startswith(cited) and (len(h) == len(cited) or not h[len(cited)].isalnum())]
    return len(starting) == 1


def _citations():
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            heading = re.sub(r"\s*\n[ \t]*(?:#[ \t]*)?", " ", match.group(2)).strip()
            line = text.count("\n", 0, match.start()) + 1
            yield path, line, match.group(1), heading


def test_citations_name_an_existing_heading():
    problems, checked = [], 0
    for path, line, cited, heading in _citations():
        where = f"{path.relative_to(ROOT)}:{line}"
        target = resolve(cited, path)
        if target is None:
            problems.append(f'{where}: {cited}, "{heading}": no such file')
            continue
        checked += 1
        if not matches(heading, headings(target)):
            problems.append(f'{where}: {cited}, "{heading}": no such heading in {cited}')
    assert checked > 20, "the citation pattern found almost nothing: is it still right?"
    assert not problems, "broken citations:\n" + "\n".join(problems)


def test_cited_files_have_unique_headings():
    targets = {resolve(cited, path) for path, _, cited, _ in _citations()} - {None}
    for target in sorted(targets):
        heads = headings(target)
        duplicates = sorted({h for h in heads if heads.count(h) > 1})
        assert not duplicates, f"{target.relative_to(ROOT)}: duplicate headings {duplicates}"


def test_markdown_links_hit_a_heading_anchor():
    problems = []
    for path in _scanned_files():
        if path.suffix != ".md":
            continue
        for match in LINK.finditer(path.read_text(encoding="utf-8")):
            target = resolve(match.group(1), path)
            if target is None:
                problems.append(f"{path.relative_to(ROOT)}: {match.group(1)}: no such file")
            elif match.group(2) not in {github_anchor(h) for h in headings(target)}:
                problems.append(f"{path.relative_to(ROOT)}: {match.group(0)}: no such anchor")
    assert not problems, "\n".join(problems)


def test_readme_fits_in_ten_minutes():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"
    assert len(text) <= 12000, f"README.md has {len(text)} characters (at most 12,000)"
    long = [f"{i}: {len(line)}" for i, line in enumerate(lines, 1) if len(line) > 100]
    assert not long, "README.md lines over 100 characters (line: length): " + ", ".join(long)


def readme_commands() -> list:
    """(module, [flag names]) of every `python -m ifnd_tf.<module>` command in README's fenced
    code blocks, continuation lines joined."""
    blocks, block, fenced = [], [], False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            if fenced:
                blocks.append("\n".join(block))
            block, fenced = [], not fenced
        elif fenced:
            block.append(line)
    commands = []
    for code in blocks:
        for line in code.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#\s|\s#$|&&|;|\|", line)[0] if " -m ifnd_tf." in line else line
            for match in re.finditer(r"python3?\s+-m\s+ifnd_tf\.(\w+)(.*)", line):
                commands.append((match.group(1), re.findall(r"(?<![\w-])--([\w.-]+)",
                                                            match.group(2))))
    return commands


def table_flags() -> set:
    """Flag names in the first column of README's tables."""
    names = set()
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `--"):
            names.update(re.findall(r"`--([\w.-]+)", line.split("|")[1]))
    return names


def known_flags(modules) -> dict:
    """{module: the flag names `python -m ifnd_tf.<module> --helpfull` lists}, one subprocess
    per module, all started at once."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    running = {m: subprocess.Popen([sys.executable, "-m", f"ifnd_tf.{m}", "--helpfull"],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
               for m in sorted(modules)}
    known = {}
    for module, process in running.items():
        output, _ = process.communicate(timeout=120)  # absl's --helpfull exits with 1
        known[module] = set(re.findall(r"^\s+--(?:\[no\])?([\w.-]+):", output, re.MULTILINE))
        assert "flagfile" in known[module], f"ifnd_tf.{module} --helpfull:\n{output[-2000:]}"
    return known


def _unknown(names, known):
    # absl booleans also take --no<name>.
    return sorted(n for n in names
                  if n not in known and not (n.startswith("no") and n[2:] in known))


@pytest.mark.e2e
def test_readme_commands_use_only_flags_their_module_knows():
    commands = readme_commands()
    assert {"train", "linear_eval", "finetune", "compare"} <= {m for m, _ in commands}
    known = known_flags({m for m, _ in commands} | {"train"})
    problems = [f"python -m ifnd_tf.{m}: unknown --{', --'.join(_unknown(names, known[m]))}"
                for m, names in commands if _unknown(names, known[m])]
    unknown_in_tables = _unknown(table_flags(), known["train"])
    if unknown_in_tables:
        problems.append(f"README tables: unknown --{', --'.join(unknown_in_tables)}")
    assert not problems, "\n".join(problems)
