"""Build README.md from nbs/index.ipynb without Quarto.

`nbdev_readme` hands nbdev's processed notebook to Quarto, which cannot be installed on every machine.
This does the same first half (nbdev's own `FilterDefaults` processors: `#| hide`, frontmatter,
directives) and replaces Quarto's part by a few lines: the Quarto cell options `echo`, `output` and
`include`, then nbconvert's Markdown exporter.

usage: python tools/build_readme.py nbs/index.ipynb README.md   (or `-` for standard output)
"""
import json, sys
from pathlib import Path

import nbformat
from execnb.nbio import read_nb
from nbconvert.exporters import MarkdownExporter
from nbdev.processors import FilterDefaults

HEADER = "<!-- Generated from {src} by `make readme`: edit the notebook, not this file. -->\n\n"


class ReadmeFilter(FilterDefaults):
    "nbdev's processors, less the ones that only make sense inside the docs site"
    skip = ('add_links', 'insert_warning')
    def base_procs(self): return [p for p in super().base_procs() if p.__name__ not in self.skip]


def _quarto_options(cell):
    "The Quarto cell options (`#| echo: false` ...) of `cell` as a dict"
    opts = {}
    for k, v in (getattr(cell, 'directives_', None) or {}).items():
        if k.endswith(':') and v: opts[k[:-1]] = str(v[0]).lower() not in ('false', 'no')
    return opts


def _plain(cell):
    "A plain nbformat cell dict with Quarto's `echo`, `output` and `include` options applied, or None"
    opts = _quarto_options(cell)
    if not opts.get('include', True): return None
    d = {'cell_type': cell.cell_type, 'id': f'c{id(cell):x}', 'metadata': {}, 'source': cell.source}
    if cell.cell_type == 'code':
        if not opts.get('echo', True): d.update(cell_type='raw', source='')   # outputs only, see below
        outs = list(cell.get('outputs', [])) if opts.get('output', True) else []
        if d['cell_type'] == 'raw':
            return [_output_cell(o) for o in outs]
        d.update(outputs=outs, execution_count=None)
    return [d]


def _output_cell(o):
    "A markdown cell showing output `o` of a cell whose source is hidden"
    data = o.get('data') or {}
    if 'text/markdown' in data: text = ''.join(data['text/markdown'])
    else: text = '```\n' + ''.join(o.get('text', '') or data.get('text/plain', '')).rstrip() + '\n```'
    return {'cell_type': 'markdown', 'id': f'o{id(o):x}', 'metadata': {}, 'source': text}


def notebook_markdown(src: Path) -> str:
    "Markdown of notebook `src` as a reader of the docs would see it"
    nb = read_nb(src)
    nb.path_ = str(src)
    ReadmeFilter()(nb)
    fm = getattr(nb, 'frontmatter_', {}) or {}
    head = ''
    if 'title' in fm: head += f"# {fm['title']}\n\n"
    if fm.get('description'): head += f"> {fm['description']}\n\n"
    cells = []
    for c in nb.cells:
        if c.cell_type == 'raw' or c.get('source') is None: continue
        cells += _plain(c) or []
    clean = {'cells': cells, 'metadata': {'language_info': {'name': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}
    node = nbformat.reads(json.dumps(clean), as_version=4)   # joins multi-line strings, as a file read would
    body, _ = MarkdownExporter().from_notebook_node(node)
    return head + body.strip() + '\n'


if __name__ == '__main__':
    if len(sys.argv) != 3: sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), sys.argv[2]
    text = HEADER.format(src=src.as_posix()) + notebook_markdown(src)
    if dst == '-': sys.stdout.write(text)
    else: Path(dst).write_text(text, encoding='utf-8')
