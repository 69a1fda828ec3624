"""Build the documentation site `_docs/` from the notebooks, without Quarto and without running them.

nbdev's own `nbdev_docs` hands its processed notebooks to Quarto, which cannot be installed on every
machine (and `nbdev_proc_nbs` tries to install it). This does nbdev's half the same way as nbdev does
(its `FilterDefaults` processors: frontmatter, `#| hide`, `#| export`, show_doc API sections, links
between symbols), and gives Quarto's half to Sphinx with MyST-NB and the Furo theme:

1. every notebook of `nbs/` (and of its sections `nbs/explanations/` and `nbs/tutorials/`) is read and
   run through nbdev's processors. The API sections come from `show_doc`, which needs the notebook's
   definitions: as in nbdev, the exported cells and the imports are run in a fresh in-process shell;
   unlike nbdev, from a cell that mixes imports with other code only the imports run, so no example,
   training or rendering cell is ever executed. Every other output shown is the one saved in the notebook.
2. Quarto's cell options become MyST-NB cell tags (`echo: false` -> `remove-input`, `output: false`
   -> `remove-output`, `include: false` -> the cell is dropped; `output: asis` markdown, such as the
   API sections, becomes page markdown), `#|` lines are removed from the code shown, links between
   notebooks become links between pages, and each page is written as `<name>.ipynb` (the name nbdev's
   symbol index links to: `00_config.ipynb` -> `config.html`) under `_proc/sphinx/`. nbdev's symbol
   links point at `page.html#name` or `#class.method`: what has no show_doc heading (private helpers,
   methods, @patch methods) gets that anchor where it is defined, or at its class's heading.
3. `sphinx-build` renders them (execution off: saved outputs only) with `tools/docs/conf.py` into
   `_docs/`, with Sphinx's own offline search.
4. k3d snapshots (sparse3d.viz.save_snapshot: self-contained pages, k3d inlined) are made here and
   written to `_docs/_static/k3d/`; a notebook asks for one with a markdown cell holding the comment
   `<!-- k3d-snapshot: NAME -->`, which becomes an <iframe> on the page.
5. Links to the published site (`doc_host` + `doc_baseurl` of settings.ini, which nbdev's symbol links
   use) are made relative, so the site works from any folder or local server, offline. The site is not
   published, and the repository address of settings.ini (`git_url`) is nbdev's placeholder: links to
   files of the repository (the API sections' [source] links, links to the Makefile or a configuration)
   lead to the file in this checkout instead, relative to the page (`relative_repo_links`).
6. The pages are polished (tables marked up to fit any width, see tools/docs/_static/sparse3d.css; an id
   only once per page, which Sphinx's search needs; pictures sized) and checked: nothing is loaded from
   the web, and every link between pages leads to a page and to an anchor on it (else the build fails).

usage: python tools/build_docs.py [--out _docs] [--only 00_config ...] [--strict] [--quiet] [--stage DIR] \
[--summary FILE]
"""
import argparse, ast, base64, configparser, hashlib, json, os, re, shutil, subprocess, sys, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
CONF_DIR = ROOT/'tools'/'docs'
STAGE = ROOT/'_proc'/'sphinx'
OUT = ROOT/'_docs'
SNAPSHOT_MARK = re.compile(r'<!--\s*k3d-snapshot:\s*([\w-]+)\s*-->')


class DocsError(Exception):
    "The site cannot be built as asked; the message says why"


def settings() -> dict:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT/'settings.ini')
    return dict(cp['DEFAULT'])


def page_name(nb: Path) -> str:
    ("The page a notebook becomes, relative to nbs/ and without suffix, as nbdev names it: "
     "tutorials/foo, config (from 00_config)")
    rel = nb.relative_to(NBS)
    return (rel.parent/re.sub(r'^\d+[a-zA-Z0-9]*_', '', rel.stem.lower())).as_posix()


# sub-folders of nbs/ whose notebooks are a section of their own in the site's contents (see `stage`)
SECTIONS = ('explanations', 'tutorials')


def notebooks(only=None) -> list:
    ("index.ipynb, the numbered chapters, then the `SECTIONS`; "
     "with `only`, index plus the notebooks whose stem or page is in it")
    chapters = sorted(p for p in NBS.glob('*.ipynb') if p.name != 'index.ipynb')
    sections = [p for folder in SECTIONS for p in sorted((NBS/folder).glob('*.ipynb'))]
    nbs = [NBS/'index.ipynb', *chapters, *sections]
    if only: nbs = [p for p in nbs if p.name == 'index.ipynb' or p.stem in only or page_name(p) in only]
    return [p for p in nbs if p.exists() and not p.name.startswith('.')]


# --- 1. nbdev's processors ---------------------------------------------------------------------------------

def _imports_only(src: str):
    "The import statements of a cell's source (top level), or None if it has none or does not parse"
    src = re.sub(r'^[ \t]*[%!].*$', '', src, flags=re.MULTILINE)      # IPython magics and shell lines
    try: tree = ast.parse(src)
    except SyntaxError: return None
    lines = src.splitlines()
    parts = ['\n'.join(lines[n.lineno - 1:n.end_lineno]) for n in tree.body
             if isinstance(n, (ast.Import, ast.ImportFrom))]
    return '\n'.join(parts) or None


def _processors():
    "nbdev's FilterDefaults processors, with exec_show_docs replaced by one that runs only definitions and imports"
    from execnb.shell import CaptureShell
    from nbdev.process import Processor
    from nbdev.processors import FilterDefaults, _is_showdoc

    class exec_show_docs(Processor):
        "Run what `show_doc` needs (exported cells, imports, show_doc calls) in a fresh shell; nothing else"
        def begin(self):
            self.k = CaptureShell()
            self.k.run_cell('from nbdev.showdoc import show_doc')

        def __call__(self, cell):
            if not getattr(self.nb, 'has_docs_', None) or cell.cell_type != 'code' or not cell.source: return
            d = cell.directives_ or {}
            if d.get('eval:', [''])[0].lower() == 'false' or 'nbdev_export()' in cell.source: return
            if _is_showdoc(cell): return self._run(cell, cell.source, keep=False)
            if d.keys() & {'export', 'exports', 'exporti', 'exec_doc'}: src = cell.source
            else: src = _imports_only(cell.source)
            if src: self._run(cell, src, keep=True)

        def _run(self, cell, src, keep):
            "Run `src`; the saved outputs of `cell` are kept unless it is a show_doc cell"
            if keep: res = self.k.run_cell(src)
            else:
                self.k.cell(cell)
                res = dict(exception=self.k.exc)
                if self.k.exc and self._fallback(cell): return
            exc = res.get('exception') if isinstance(res, dict) else getattr(res, 'exception', None)
            if exc:
                title = (getattr(self.nb, 'frontmatter_', None) or {}).get('title', '?')
                raise DocsError(f"{self.nb.path_}: building its API docs failed in cell {cell.idx_} "
                                   f"(notebook '{title}'):\n{src}\n{type(exc).__name__}: {exc}") from None

        def _fallback(self, cell):
            ("show_doc itself failed on an object that exists (fastcore's docments compares defaults with `!=`, "
             "which a numpy array default breaks): document it from its signature and docstring instead, and say so")
            import inspect
            m = re.search(r'show_doc\(\s*([\w.]+)', cell.source)
            obj = eval(m[1], self.k.user_ns) if m and m[1].split('.')[0] in self.k.user_ns else None
            if obj is None: return False
            try: sig = str(inspect.signature(obj))
            except (TypeError, ValueError): sig = ''
            kind = 'class' if inspect.isclass(obj) else 'def'
            md = (f'---\n\n### {m[1]}\n\n```python\n{kind} {m[1].rsplit(".", 1)[-1]}{sig}\n```\n\n'
                  f'*{inspect.getdoc(obj) or ""}*\n')
            cell.outputs = [dict(output_type='execute_result', metadata={}, execution_count=None,
                                 data={'text/markdown': md.splitlines(True), 'text/plain': [m[1]]})]
            print(f'  warning: {Path(self.nb.path_).name}: show_doc({m[1]}) failed ({type(self.k.exc).__name__}: '
                  f'{self.k.exc}); documented from its signature instead', flush=True)
            self.k.exc = None
            return True

    class DocsFilter(FilterDefaults):
        def base_procs(self):
            return [exec_show_docs if p.__name__ == 'exec_show_docs' else p for p in super().base_procs()
                    if p.__name__ not in ('insert_warning', 'add_fold')]
    return DocsFilter()


# --- 2. to a MyST-NB notebook ---------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r'^\s*#\|.*$\n?', re.MULTILINE)
_QUARTO_ATTRS = re.compile(r'\[([^\]]+)\]\(([^)\s]+)\)\{[^}]*\}')
_SD_HEADING = re.compile(r'^(#{3,5}) ([\w.]+)\s*$', re.MULTILINE)
_MD_LINK = re.compile(r'(\]\()([^)\s#]+)(#[^)\s]*)?(\))')


def _options(cell) -> dict:
    "Quarto cell options (`#| echo: false` ...) as a dict of booleans or strings"
    opts = {}
    items = [(k[:-1], v[0]) for k, v in (getattr(cell, 'directives_', None) or {}).items() if k.endswith(':') and v]
    # processors (clean_show_doc) add options to the source after the directives were parsed: read those too
    items += re.findall(r'^\s*#\|\s*([\w-]+):\s*(\S+)', cell.source or '', re.MULTILINE)
    for k, v in items:
        s = str(v).lower()
        opts[k] = s if s not in ('true', 'false', 'yes', 'no') else s in ('true', 'yes')
    return opts


def _md_output(outs) -> str:
    "The markdown of `output: asis` outputs: text/markdown, else plain text"
    parts = []
    for o in outs:
        data = o.get('data') or {}
        if 'text/markdown' in data: parts.append(''.join(data['text/markdown']))
        elif o.get('output_type') == 'stream': parts.append(''.join(o.get('text', '')))
        elif 'text/plain' in data: parts.append(''.join(data['text/plain']))
    return '\n\n'.join(parts)


def _local(nb: Path, target: str):
    ("The file a relative link of notebook `nb` points at (the home page's links are relative to the repository, "
     "as README's), or None")
    if re.match(r'^[a-z][\w+.-]*:', target) or target.startswith(('/', '#')): return None
    for base in (nb.parent, ROOT) if nb.name == 'index.ipynb' else (nb.parent,):
        p = (base/target).resolve()
        if p.exists() and p.is_relative_to(ROOT): return p
    return None


def _section_id(heading: str) -> str:
    "The id Sphinx gives the section of a heading (docutils' make_id: `Camera` -> camera, `load_config` -> load-config)"
    from docutils.nodes import make_id
    return make_id(heading)


def _sd_heading(m) -> str:
    ("A show_doc heading with nbdev's anchor (`#load_config`) before it, unless its section already has that id: two "
     "elements with one id would make the search page take the empty anchor for the section, and fail on it")
    anchor = m[2].lower()
    mark = '' if _section_id(m[2]) == anchor else f'<a id="{anchor}" class="sd-anchor"></a>\n\n'
    return f'{mark}{m[1]} {m[2]}'


def _fix_markdown(md: str, nb: Path, page: str, site: dict, media: Path = None, included=None) -> str:
    ("Quarto-only syntax out; show_doc headings get nbdev's anchors; local pictures copied beside the pages; "
     "links between notebooks become links between pages")
    def image(m):
        p = _local(nb, m[2])
        if p is None or media is None or not p.is_file(): return m[0]
        dst = media/p.relative_to(ROOT).as_posix().replace('/', '__')
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists() or dst.read_bytes() != p.read_bytes(): shutil.copyfile(p, dst)
        return f'{m[1]}{"../" * page.count("/")}{media.name}/{dst.name}{m[3]}'
    md = re.sub(r'(!\[[^\]]*\]\()([^)\s]+)(\))', image, md)
    md = _QUARTO_ATTRS.sub(lambda m: f'<a href="{m[2]}" class="sd-source">{m[1]}</a>' if m[1] == 'source'
                           else f'[{m[1]}]({m[2]})', md)
    md = _SD_HEADING.sub(_sd_heading, md)
    depth = page.count('/')

    def link(m):
        p = _local(nb, m[2])
        if p is None: return m[0]
        if p.suffix == '.ipynb' and p.is_relative_to(NBS):
            if included is None or page_name(p) in included:
                return f'{m[1]}{"../" * depth}{page_name(p)}.ipynb{m[3] or ""}{m[4]}'
            # not in a partial build: the notebook, in this checkout (made relative by relative_repo_links)
            rel = p.relative_to(ROOT).as_posix()
            return f'{m[1]}{site["git_url"]}/blob/{site.get("branch", "main")}/{rel}{m[3] or ""}{m[4]}'
        if p.parent == ROOT and p.name in REPORTS and p.is_file():      # a generated report: its own page
            return f'{m[1]}{"../" * depth}{REPORTS[p.name]}.md{m[3] or ""}{m[4]}'
        kind = 'tree' if p.is_dir() else 'blob'         # another file of the repository: in this checkout (below)
        return (f'{m[1]}{site["git_url"]}/{kind}/{site.get("branch", "main")}/'
                f'{p.relative_to(ROOT).as_posix()}{m[3] or ""}{m[4]}')
    return _MD_LINK.sub(link, md)


def _snapshots_in(md: str, page: str, wanted: set) -> str:
    "Replace `<!-- k3d-snapshot: NAME -->` by an iframe of _static/k3d/NAME.html"
    def frame(m):
        name = m[1]
        wanted.add(name)
        title = SNAPSHOTS.get(name, (None, name))[1]
        src = f'{"../" * page.count("/")}_static/k3d/{name}.html'
        return (f'<div class="k3d-snapshot"><iframe src="{src}" title="{title}" loading="lazy"></iframe>'
                f'<p class="k3d-caption">Interactive: drag to turn, scroll to zoom. '
                f'<a href="{src}" target="_blank">Open full size</a>.</p></div>')
    return SNAPSHOT_MARK.sub(frame, md)


def _clean_outputs(outs) -> list:
    "Outputs as Sphinx should see them: widget views fall back to their text, ANSI kept for MyST-NB to strip"
    res = []
    for o in outs:
        o = json.loads(json.dumps(o))
        data = o.get('data')
        if data:
            data.pop('application/vnd.jupyter.widget-view+json', None)
            if not data: continue
        res.append(o)
    return res


_EXPORT_DIRECTIVE = re.compile(r'^\s*#\|\s*export[is]?\b', re.MULTILINE)


def _patched_classes(fn) -> list:
    "The classes a fastcore `@patch` function is added to (its first argument's annotation: `A` or `A|B` or `(A, B)`)"
    deco = lambda d: getattr(d.func if isinstance(d, ast.Call) else d, 'id',
                             getattr(getattr(d, 'func', d), 'attr', None))
    if not any(deco(d) == 'patch' for d in fn.decorator_list) or not fn.args.args: return []
    ann = fn.args.args[0].annotation
    parts = ann.elts if isinstance(ann, ast.Tuple) else [ann.left, ann.right] if isinstance(ann, ast.BinOp) else [ann]
    return [p.id for p in parts if isinstance(p, ast.Name)]


def defined_anchors(src: str) -> list:
    "nbdev's anchors (lower case) of what a cell defines: `name` of functions and classes, `class.method` of methods"
    src = re.sub(r'^[ \t]*[%!].*$', '', src, flags=re.MULTILINE)
    try: tree = ast.parse(src)
    except SyntaxError: return []
    names = []
    for n in tree.body:
        if isinstance(n, ast.ClassDef):
            names += [n.name] + [f'{n.name}.{m.name}' for m in n.body
                                 if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names += [f'{c}.{n.name}' for c in _patched_classes(n)] or [n.name]
    return [x.lower() for x in names]


def _anchor_missing(cells: list):
    "Fill the anchor cells (marked `anchors_`) with the anchors the page lacks (a method's goes to its class's heading)"
    md = [c for c in cells if c['cell_type'] == 'markdown' and 'anchors_' not in c]
    have = {a for c in md for a in re.findall(r'\bid="([^"]+)"', c['source'])}
    headings = {}                                            # section id -> the markdown cell of its heading
    for c in md:
        for h in re.findall(r'^#{1,6} (.+?)\s*$', c['source'], re.MULTILINE): headings.setdefault(_section_id(h), c)
    have |= set(headings)                                    # a section is its own anchor (never a second element)
    keep = []
    for c in cells:
        if 'anchors_' in c:
            ids = []
            for a in dict.fromkeys(c.pop('anchors_')):
                if a in have: continue
                have.add(a)
                cls = a.split('.')[0] if '.' in a else None
                owner = headings.get(_section_id(cls)) if cls else None
                if owner is None: ids.append(a); continue
                heading = re.compile(r'^(#{3,5} )' + re.escape(cls) + r'\s*$', re.MULTILINE | re.IGNORECASE)
                owner['source'] = heading.sub(lambda m, a=a: f'<a id="{a}" class="sd-anchor"></a>\n\n{m[0]}',
                                              owner['source'], count=1)
            if not ids: continue
            c['source'] = ''.join(f'<a id="{a}" class="sd-anchor"></a>' for a in ids)
        keep.append(c)
    cells[:] = keep


def process_notebook(nb_path: Path, site: dict, wanted: set, media: Path = None, included=None) -> tuple:
    "(page name, title, nbformat dict) of notebook `nb_path` as the docs show it"
    from execnb.nbio import read_nb
    nb = read_nb(nb_path)
    nb.path_ = str(nb_path)
    # nbdev's symbol links point at `page.html#name` (or `#class.method`); show_doc headings make those anchors,
    # but not for what has no show_doc (private helpers, methods): those get one where the code is defined
    order = [c.get('id') for c in nb.cells]
    defs = {c.get('id'): defined_anchors(_DIRECTIVE.sub('', c.source)) for c in nb.cells
            if c.cell_type == 'code' and _EXPORT_DIRECTIVE.search(c.source or '')}
    cwd = Path.cwd()
    os.chdir(nb_path.parent)                                   # as nbdev does: relative paths in exported cells
    try: _processors()(nb)
    finally: os.chdir(cwd)
    # the processors drop `#| export` cells: their anchors go before the next cell of the notebook still shown
    alive, anchors_at, pending = {c.get('id') for c in nb.cells}, {}, []
    for cid in order:
        pending += defs.get(cid, [])
        if cid in alive and pending: anchors_at[cid], pending = pending, []
    # nbdev inserts the show_doc cells of an exported cell one by one after it, so they come out in reverse:
    # put each run of them back in the order the names are defined
    i = 0
    while i < len(nb.cells):
        j = i
        while j < len(nb.cells) and nb.cells[j].get('has_sd'): j += 1
        if j - i > 1: nb.cells[i:j] = nb.cells[i:j][::-1]
        i = max(j, i + 1)
    page = page_name(nb_path)
    fm = getattr(nb, 'frontmatter_', {}) or {}
    title = fm.get('title') or page.rsplit('/', 1)[-1]
    head = f'# {title}\n'
    if fm.get('description'): head += f'\n```{{container}} description\n{fm["description"]}\n```\n'
    cells = [dict(cell_type='markdown', metadata={}, source=head)]
    for c in nb.cells:
        if c.get('id') in anchors_at:
            cells.append(dict(cell_type='markdown', metadata={}, source='', anchors_=anchors_at[c.get('id')]))
        if c.cell_type == 'raw' or c.get('source') is None: continue
        opts = _options(c)
        if opts.get('include') is False: continue
        if c.cell_type == 'markdown':
            md = _snapshots_in(_fix_markdown(c.source, nb_path, page, site, media, included), page, wanted)
            cells.append(dict(cell_type='markdown', metadata={}, source=md))
            continue
        outs = _clean_outputs(c.get('outputs', []))
        if opts.get('output') == 'asis':
            md = _md_output(outs)
            if opts.get('echo', True) is not False:
                cells.append(dict(cell_type='code', metadata={}, source=_DIRECTIVE.sub('', c.source).strip(),
                                  outputs=[], execution_count=None))
            # show_doc's rule: CSS draws it (a transition here upsets docutils)
            md = re.sub(r'^\s*---\s*\n', '', md)
            if md.strip():
                cells.append(dict(cell_type='markdown', metadata={},
                                  source=_fix_markdown(md, nb_path, page, site, media, included)))
            continue
        tags = []
        if opts.get('echo') is False: tags.append('remove-input')
        if opts.get('output') is False: tags.append('remove-output')
        src = _DIRECTIVE.sub('', c.source).strip()
        if not src and not outs: continue
        if not src and 'remove-input' not in tags: tags.append('remove-input')
        cells.append(dict(cell_type='code', metadata={'tags': tags} if tags else {}, source=src, outputs=outs,
                          execution_count=None))
    if pending: cells.append(dict(cell_type='markdown', metadata={}, source='', anchors_=pending))
    _anchor_missing(cells)
    doc = dict(cells=cells, nbformat=4, nbformat_minor=5,
               metadata=dict(kernelspec=dict(name='python3', display_name='Python 3', language='python'),
                             language_info=dict(name='python')))
    return page, title, doc


def _toctree(caption, pages) -> str:
    return f'```{{toctree}}\n:hidden:\n:caption: {caption}\n\n' + '\n'.join(pages) + '\n```\n' if pages else ''


# generated reports at the top of the repo, shown as pages of their own (not `benchmarks`: that is the chapter's
# page, and BENCHMARKS.html beside benchmarks.html would be one file on a case-insensitive file system)
REPORTS = {'BENCHMARKS.md': 'benchmarks_report', 'FAULTS.md': 'faults_report'}


def stage_reports(stage_dir: Path) -> list:
    "Copy the generated reports that exist (`REPORTS`) into `stage_dir` as their pages; their page names"
    pages = []
    for name, page in REPORTS.items():
        src, dst = ROOT/name, stage_dir/f'{page}.md'
        if not src.exists():
            dst.unlink(missing_ok=True); continue
        text = src.read_text(encoding='utf-8')
        if not dst.exists() or dst.read_text(encoding='utf-8') != text: dst.write_text(text, encoding='utf-8')
        pages.append(page)
    return pages


def stage(nbs: list, stage_dir: Path, site: dict, quiet=False) -> set:
    ("Write the MyST-NB notebooks of `nbs` under `stage_dir` (only those that changed), and the reports; "
     "the snapshots they ask for")
    wanted, pages = set(), []
    written = set()
    stage_dir.mkdir(parents=True, exist_ok=True)
    reports = stage_reports(stage_dir)
    for p in nbs:
        t0 = time.perf_counter()
        page, title, doc = process_notebook(p, site, wanted, stage_dir/'_media', {page_name(q) for q in nbs})
        pages.append(page)
        if page == 'index':
            section = lambda folder: [page_name(q) for q in nbs if q.parent == NBS/folder]
            doc['cells'].append(dict(cell_type='markdown', metadata={}, source='\n'.join(filter(None, [
                _toctree('Explanations', section('explanations')),     # first: the design chapter is read first
                _toctree('Chapters', [page_name(q) for q in nbs if q.parent == NBS and q.name != 'index.ipynb']),
                _toctree('Tutorials', section('tutorials')),
                _toctree('Reports', reports)]))))
        dst = stage_dir/f'{page}.ipynb'
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc, indent=1, ensure_ascii=False) + '\n'
        if not dst.exists() or dst.read_text(encoding='utf-8') != text: dst.write_text(text, encoding='utf-8')
        written.add(dst)
        if not quiet: print(f'  {p.relative_to(ROOT)} -> {page}.html ({time.perf_counter() - t0:.1f} s)', flush=True)
    for old in stage_dir.glob('*.md'):          # reports that are gone (or were staged under another name)
        if old.stem not in reports: old.unlink()
    for old in stage_dir.rglob('*.ipynb'):      # pages of notebooks that are gone
        if old not in written: old.unlink()
    return wanted


# --- 3. Sphinx ---------------------------------------------------------------------------------------------

def sphinx(stage_dir: Path, out: Path, strict=False, quiet=False) -> list:
    "Run sphinx-build (in its own process); the warnings it printed"
    log = out.parent/'sphinx-warnings.log'
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-j', '1', '-c', str(CONF_DIR),
           '-d', str(out.parent/'doctrees'), '-w', str(log), str(stage_dir), str(out)]
    if strict: cmd.insert(3, '-W')
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'SPARSE3D_ROOT': str(ROOT)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    warns = [line for line in (log.read_text(encoding='utf-8').splitlines() if log.exists() else []) if line.strip()]
    if res.returncode:
        raise DocsError(f'sphinx-build failed (exit {res.returncode}):\n{res.stderr[-4000:]}')
    if warns and not quiet: print('Sphinx warnings:\n  ' + '\n  '.join(warns), flush=True)
    return warns


# --- 4. k3d snapshots --------------------------------------------------------------------------------------

def _synthetic_sample(n_views=4, seed=0):
    ("One synthetic chair as MultiViewDataset gives it (views, masks, cameras, voxels): "
     "rendered, preprocessed and packed here")
    import tempfile
    from sparse3d.synthetic import render_dataset
    from sparse3d.preprocess import PreprocessSettings, preprocess_category, split_and_pack
    from sparse3d.data import MultiViewDataset
    tmp = Path(tempfile.mkdtemp(prefix='sparse3d-docs-'))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            render_dataset(tmp/'co3d', n_sequences=3, n_frames=8, image_size=64, seed=seed, workers=1, progress=False)
            preprocess_category(tmp/'co3d', tmp/'proc', 'chair', PreprocessSettings(image_size=64, cube_len=32),
                                workers=1, progress=False)
            split_and_pack(tmp/'proc', 'chair', tmp/'co3d', progress=False)
            ds = MultiViewDataset(tmp/'proc', 'train', num_views=n_views, train=False)
            return ds[0]
    finally: shutil.rmtree(tmp, ignore_errors=True)


def snapshot_chair_hull():
    "k3d plot: a synthetic chair's ground truth against its visual hull from 4 views"
    from sparse3d.geometry import visual_hull
    from sparse3d.viz import voxel_plot
    s = _synthetic_sample()
    hull = visual_hull(s['masks'], s['K'], s['R'], s['t'], s['voxels'].shape[0])
    return voxel_plot(hull.numpy(), s['voxels'].numpy(), menu_visibility=False, axes_helper=0, height=480)


def snapshot_toy_chair():
    "k3d plot: a hand-made blocky chair and a guess with a missed leg and an invented armrest (as in 10_visualize)"
    import numpy as np
    from scipy import ndimage
    from sparse3d.viz import voxel_plot
    g = np.zeros((32, 32, 32), bool)
    g[8:24, 12:15, 8:24] = True
    for x in (8, 22):
        for z in (8, 22): g[x:x + 2, 0:12, z:z + 2] = True
    g[8:24, 15:30, 8:10] = True
    guess = ndimage.gaussian_filter(g.astype(np.float32), 0.8)
    guess[20:26, :12, 20:26] *= 0.2
    guess[8:24, 15:18, 20:24] = 0.9
    return voxel_plot(guess, g, menu_visibility=False, axes_helper=0, height=480)


# name -> (function making the k3d plot, title of the frame)
SNAPSHOTS = {
    'chair_hull': (snapshot_chair_hull, 'A synthetic chair: ground truth against its visual hull from 4 views'),
    'toy_chair': (snapshot_toy_chair, 'A blocky chair against a guess with a missed leg and an invented armrest')}


def make_snapshots(names, dst: Path, cache: Path, quiet=False):
    "Write the k3d snapshot pages `names` to `dst`; each is kept in `cache` until sparse3d or this file changes"
    import k3d, sparse3d
    from sparse3d.viz import save_snapshot
    key_src = (Path(__file__).read_bytes() + (ROOT/'sparse3d'/'viz.py').read_bytes()
               + f'{k3d.__version__} {sparse3d.__version__}'.encode())
    key = hashlib.sha256(key_src).hexdigest()[:16]
    # the site's favicon, inlined: a snapshot opened on its own ("Open full size", or saved) stays self-contained
    icon = 'data:image/svg+xml;base64,' + base64.b64encode((CONF_DIR/'_static'/'favicon.svg').read_bytes()).decode()
    project = settings()['lib_name']
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        if name not in SNAPSHOTS:
            raise DocsError(f'a notebook asks for k3d snapshot {name!r}; known: {", ".join(SNAPSHOTS)} '
                            '(tools/build_docs.py)')
        cached = cache/f'{name}-{key}.html'
        if not cached.exists():
            t0 = time.perf_counter()
            cache.mkdir(parents=True, exist_ok=True)
            for old in cache.glob(f'{name}-*.html'): old.unlink()
            save_snapshot(SNAPSHOTS[name][0](), cached, title=f'{SNAPSHOTS[name][1]} - {project}', icon=icon)
            if not quiet: print(f'  k3d snapshot {name} ({time.perf_counter() - t0:.1f} s)', flush=True)
        shutil.copyfile(cached, dst/f'{name}.html')


# --- 5. relative links -------------------------------------------------------------------------------------

def site_url(site: dict) -> str:
    "The published site's address, ending in /"
    return (site['doc_host'].rstrip('/') + '/' + site.get('doc_baseurl', '').strip('/')).rstrip('/') + '/'


def relative_site_links(out: Path, site: dict):
    "Links to the published site (nbdev's symbol links, the README's link to the docs) made relative to each page"
    base = site_url(site)
    pat = re.compile(r'(href=")' + re.escape(base) + r'([^"]*)(")')
    for f in out.rglob('*.html'):
        if '_static' in f.relative_to(out).parts: continue
        html = f.read_text(encoding='utf-8')
        if base not in html: continue
        rel = '../' * (len(f.relative_to(out).parts) - 1)
        def fix(m, rel=rel):
            target = m[2] or 'index.html'
            if target.startswith('#'): target = 'index.html' + target
            # a page this (partial) build lacks: the published one
            if not (out/target.split('#')[0]).is_file(): return m[0]
            return f'{m[1]}{rel}{target}{m[3]}'
        html = pat.sub(fix, html)
        html = html.replace('class="reference external" href="' + rel, 'class="reference internal" href="' + rel)
        f.write_text(html, encoding='utf-8')


def relative_repo_links(out: Path, site: dict):
    """Links to files of the repository on `git_url` (nbdev's [source] links, links to the Makefile ...) made relative
    links to the same file in this checkout, which holds the site: the repository is not published"""
    repo = re.escape(site['git_url'].rstrip('/'))
    pat = re.compile(r'(href=")' + repo + r'/(?:blob|tree)/[^/"]+/([^"#]*)(#[^"]*)?(")')
    root = ROOT.resolve()
    for f in out.rglob('*.html'):
        if '_static' in f.relative_to(out).parts: continue
        html = f.read_text(encoding='utf-8')
        if site['git_url'] not in html: continue
        def fix(m, f=f):
            target = root/m[2]
            if not target.exists(): return m[0]
            return f'{m[1]}{Path(os.path.relpath(target, f.parent.resolve())).as_posix()}{m[3] or ""}{m[4]}'
        f.write_text(pat.sub(fix, html), encoding='utf-8')


_TABLE = re.compile(r'<table class="docutils[^"]*"[^>]*>.*?</table>', re.S)
_CODE = re.compile(r'(<code class="docutils literal[^"]*)("[^>]*>)(.*?)(</code>)', re.S)
LONG_CODE = 20          # characters: a name in a table cell longer than this may break, after _ . / only
WIDE_TABLE = 8          # columns: a table with this many or more is set in a smaller type (sparse3d.css)


def _text(html: str) -> str:
    import html as h
    return h.unescape(re.sub(r'<[^>]+>', '', html)).strip()


def _polish_table(table: str) -> str:
    "A table that fits its column: header labels on the cells (for the phone layout), long names breakable after _ . /"
    heads = ([_text(h) for h in re.findall(r'<th\b[^>]*>(.*?)</th>', table.split('</thead>')[0], re.S)]
             if '<thead' in table else [])
    def code(m):
        if len(_text(m[3])) <= LONG_CODE: return m[0]
        inner = re.sub(r'(?<=>)([^<]+)', lambda t: re.sub(r'([_./])(?=\w)', r'\1<wbr>', t[1]), m[3])
        return f'{m[1]} long{m[2]}{inner}{m[4]}'
    def row(m):
        cells = iter(heads)
        return re.sub(r'<td\b', lambda _: f'<td data-label="{next(cells, "")}"', m[0])
    import html as h
    heads = [h.escape(x, quote=True) for x in heads]
    if '<tbody' in table and len(heads) >= 3:
        table = table.replace('<table class="docutils', '<table class="docutils stack', 1)
        head, body = table.split('<tbody', 1)
        table = head + '<tbody' + re.sub(r'<tr\b.*?</tr>', row, body, flags=re.S)
    if len(heads) >= WIDE_TABLE:           # smaller type, and its headers ("samples/s", "GFLOP/step") may break after /
        table = table.replace('<table class="docutils', '<table class="docutils wide', 1)
        head, rest = table.split('</thead>', 1)
        table = re.sub(r'(?<=>)[^<]+', lambda t: t[0].replace('/', '/<wbr>'), head) + '</thead>' + rest
    table = _CODE.sub(code, table)
    # a long run of prose without spaces ("missing/non-cubic/huge/NaN") may break after / or _ too
    long_word = lambda t: re.sub(r'\S{%d,}' % (LONG_CODE + 1),
                                 lambda w: re.sub(r'([/_])(?=\w)', r'\1<wbr>', w[0]), t[0])
    return re.sub(r'(<code\b.*?</code>)|(?<=>)[^<]+', lambda m: m[1] or long_word(m), table, flags=re.S)


_SD_ANCHOR = re.compile(r'<a id="([^"]+)" class="sd-anchor"></a>')


def _drop_duplicate_anchors(html: str) -> str:
    ("Remove the nbdev anchors (`sd-anchor`) whose id another element of the page already has (MyST gives "
     "`load_config` a target of its own): one id, one element, else the search page takes an empty anchor for a "
     "section and fails")
    ids = re.findall(r'\bid="([^"]+)"', html)
    twice = {i for i in ids if ids.count(i) > 1} if len(ids) != len(set(ids)) else set()
    if not twice: return html
    html = _SD_ANCHOR.sub(lambda m: '' if m[1] in twice else m[0], html)
    return re.sub(r'<p>\s*</p>\n?', '', html)


def _sized_images(html: str, page: Path) -> str:
    ("Pictures with their width and height: the page keeps its layout while they load, so a link to an anchor below "
     "one lands on the anchor (without them, the browser scrolls, then the pictures push the anchor down)")
    from PIL import Image
    def size(m):
        src = re.search(r'\bsrc="([^"]+)"', m[0])
        f = (page.parent/src[1]).resolve() if src and not re.match(r'^[a-z][\w+.-]*:', src[1]) else None
        if f is None or not f.is_file() or re.search(r'\b(width|height)=', m[0]): return m[0]
        try:
            with Image.open(f) as im: w, h = im.size
        except Exception: return m[0]                       # not a picture PIL reads (SVG): left as it is
        return m[0].replace('<img ', f'<img width="{w}" height="{h}" ', 1)
    return re.sub(r'<img\b[^>]*>', size, html)


def polish_pages(out: Path) -> int:
    "Every page: tables that fit (sparse3d.css, `_polish_table`), no id twice, pictures sized; the number of tables"
    n = 0
    for f in out.rglob('*.html'):
        if '_static' in f.relative_to(out).parts: continue
        html = f.read_text(encoding='utf-8')
        new, k = _TABLE.subn(lambda m: _polish_table(m[0]), html)
        new = _sized_images(_drop_duplicate_anchors(new), f)
        if new != html: f.write_text(new, encoding='utf-8')
        n += k
    return n


def check_offline(out: Path) -> list:
    "Pages that load a script, style sheet, font or frame from the web (there must be none)"
    bad = []
    pat = re.compile(r'<(script|link|iframe|img)\b[^>]*\b(src|href)\s*=\s*["\']?((https?:)?//[^"\'\s>]+)', re.I)
    for f in out.rglob('*.html'):
        for m in pat.finditer(f.read_text(encoding='utf-8', errors='replace')):
            if m[1].lower() == 'link' and re.search(r'rel=["\']?(canonical|alternate)', m[0]): continue
            bad.append(f'{f.relative_to(out)}: <{m[1]} {m[2]}="{m[3]}">')
    return bad


def check_links(out: Path) -> list:
    "Links between the pages of `out` that lead nowhere: to a file that is missing, or to an anchor the page lacks"
    from urllib.parse import unquote, urlsplit
    out = Path(out).resolve()
    pages = [p for p in out.rglob('*.html') if '_static' not in p.relative_to(out).parts]
    text = {p: p.read_text(encoding='utf-8', errors='replace') for p in pages}
    ids = {p: set(re.findall(r'\b(?:id|name)="([^"]+)"', h)) for p, h in text.items()}
    bad = []
    for p, h in text.items():
        for href in dict.fromkeys(re.findall(r'<a\b[^>]*?\bhref="([^"]*)"', h)):
            # the web (checked offline elsewhere)
            if re.match(r'^[a-z][\w+.-]*:', href) or href.startswith('//'): continue
            u = urlsplit(href)
            target = (p.parent/unquote(u.path)).resolve() if u.path else p
            if not target.exists(): bad.append(f'{p.relative_to(out)}: {href} (no such file)')
            elif u.fragment and target in ids and unquote(u.fragment) not in ids[target]:
                bad.append(f'{p.relative_to(out)}: {href} '
                           f'(no anchor #{unquote(u.fragment)} on {target.relative_to(out)})')
    return bad


def drop_stale_pages(html: Path, stage_dir: Path) -> list:
    "Delete the pages of `html` whose source is no longer staged (Sphinx's incremental build keeps them); their paths"
    gone = []
    for p in html.rglob('*.html'):
        rel = p.relative_to(html).with_suffix('')
        if rel.parts[0].startswith('_') or rel.as_posix() in ('genindex', 'search'): continue
        if not any((stage_dir/rel).with_suffix(s).exists() for s in ('.ipynb', '.md')):
            p.unlink(); gone.append(p)
    return gone


def build(out=OUT, only=None, strict=False, quiet=False, stage_dir=None) -> dict:
    "Build the site into `out`; a summary"
    t0 = time.perf_counter()
    out, site = Path(out), settings()
    stage_dir = (Path(stage_dir) if stage_dir
                 else (STAGE if not only else STAGE.with_name('sphinx-' + '-'.join(sorted(only)))))
    stage_dir.mkdir(parents=True, exist_ok=True)
    nbs = notebooks(only)
    if not quiet: print(f'processing {len(nbs)} notebooks', flush=True)
    wanted = stage(nbs, stage_dir, site, quiet)
    if not quiet: print(f'sphinx-build -> {out}', flush=True)
    # MyST-NB writes its `jupyter_execute/` beside Sphinx's output folder: build in _proc/, then copy
    html = stage_dir.with_name(stage_dir.name + '-build')/'html'
    warns = sphinx(stage_dir, html, strict, quiet)
    drop_stale_pages(html, stage_dir)
    if out.exists(): shutil.rmtree(out)
    shutil.copytree(html, out, ignore=shutil.ignore_patterns('_sources', '.buildinfo', '.buildinfo.bak'))
    make_snapshots(wanted, out/'_static'/'k3d', stage_dir.parent/'k3d-cache', quiet)
    relative_site_links(out, site)
    relative_repo_links(out, site)
    polish_pages(out)
    (out/'.nojekyll').touch()                                  # GitHub Pages: serve _static/ as it is
    bad = check_offline(out)
    if bad: raise DocsError('pages that need the internet:\n  ' + '\n  '.join(bad))
    bad = check_links(out)
    if bad:
        raise DocsError('links that lead nowhere (a missing page, or an anchor the page lacks):\n  ' + '\n  '.join(bad))
    pages = sorted(str(p.relative_to(out)) for p in out.rglob('*.html')
                   if '_static' not in p.parts and p.name not in ('genindex.html', 'search.html'))
    secs = time.perf_counter() - t0
    if not quiet:
        print(f'{len(pages)} pages, {len(wanted)} k3d snapshots, {len(warns)} warnings in {secs:.0f} s: '
              f'open {out/"index.html"}')
    return dict(pages=pages, snapshots=sorted(wanted), warnings=warns, seconds=secs)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default=str(OUT), help='output folder (default: _docs)')
    ap.add_argument('--only', nargs='*', help='build only these notebooks (stems or page names) and the home page')
    ap.add_argument('--strict', action='store_true', help='fail on Sphinx warnings')
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--stage', help='folder for the staged pages (default: _proc/sphinx)')
    ap.add_argument('--summary', help='write the summary (pages, snapshots, warnings, seconds) to this JSON file')
    a = ap.parse_args()
    try: info = build(a.out, a.only, a.strict, a.quiet, a.stage)
    except DocsError as e: sys.exit(f'make docs: {e}')
    if a.summary: Path(a.summary).write_text(json.dumps(info, indent=1), encoding='utf-8')
