"""Tidy the notebooks where nbdev_clean does not: kernel metadata as JupyterLab writes it, no Open3D banner.

1. **Kernel metadata.** A notebook whose metadata names no kernel makes JupyterLab ask which kernel to use;
   once the kernel runs, JupyterLab writes its `kernelspec` and `language_info` into the metadata, and the
   notebook shows as modified before anything ran. So every notebook carries both, exactly as `make lab`'s
   kernel reports them:
   - `kernelspec`: `python3`, displayed as `python3` (nbdev_clean sets `display_name` to the name, so the
     kernel `make lab` offers, tools/jupyter/kernels/python3, is displayed that way too);
   - `language_info`: what this venv's ipykernel sends (settings.ini's `allowed_metadata_keys` keeps it
     through nbdev_clean). A notebook that has one keeps it, so running this on another Python changes
     nothing.
2. **Open3D's banner.** open3d, imported in a Jupyter kernel, printed "Jupyter environment detected.
   Enabling Open3D WebVisualizer." and two `[Open3D INFO] WebRTC ...` lines into the first output that
   imported it. sparse3d now keeps it quiet (sparse3d/__init__.py); saved outputs from before lose those
   lines here (only those lines: the rest of the output is kept, an output left empty is dropped).

`make nbclean` runs this, then nbdev_clean; `make check-clean` (part of `make test`) fails when that changes a
notebook, so a new notebook gets its metadata from `make nbclean`.

usage: python tools/nb_tidy.py [--check] [NOTEBOOK ...]   (default: every notebook under nbs/)
"""
import argparse, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}
OPEN3D_BANNER = re.compile(r'^(Jupyter environment detected\. Enabling Open3D WebVisualizer\.'
                           r'|\[Open3D INFO\] WebRTC GUI backend enabled\.'
                           r'|\[Open3D INFO\] WebRTCWindowSystem: HTTP handshake server disabled\.)[ \t]*\n?',
                           re.MULTILINE)


def language_info() -> dict:
    "The `language_info` the kernel of this environment (ipykernel) reports"
    from ipykernel.ipkernel import IPythonKernel
    return json.loads(json.dumps(IPythonKernel.language_info))


def fix_metadata(nb: dict, info: dict) -> list:
    "Set the kernel metadata of notebook `nb` (a dict) in place; what changed"
    md, changed = nb.setdefault('metadata', {}), []
    if md.get('kernelspec') != KERNELSPEC:
        md['kernelspec'] = dict(KERNELSPEC); changed.append('kernelspec')
    if not (md.get('language_info') or {}).get('name'):
        md['language_info'] = info; changed.append('language_info')
    return changed


def strip_open3d_banner(nb: dict) -> list:
    "Remove Open3D's Jupyter banner lines from the stream outputs of `nb` in place; the ids of the cells changed"
    changed = []
    for cell in nb.get('cells', []):
        outs, kept, hit = cell.get('outputs') or [], [], False
        for o in outs:
            if o.get('output_type') == 'stream':
                text = ''.join(o.get('text', ''))
                new = OPEN3D_BANNER.sub('', text)
                if new != text:
                    hit = True
                    if not new: continue
                    o = {**o, 'text': new.splitlines(True)}
            kept.append(o)
        if hit:
            cell['outputs'] = kept
            changed.append(cell.get('id', '?'))
    return changed


def notebooks(paths=None) -> list:
    "The notebooks named, or every notebook under nbs/ (not in folders starting with _ or ., as nbdev)"
    if paths: return [Path(p) for p in paths]
    return sorted(p for p in (ROOT/'nbs').rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT/'nbs').parts))


def tidy(nb: dict, info: dict) -> list:
    "Tidy notebook `nb` in place; what changed, as words"
    changed = fix_metadata(nb, info)
    cells = strip_open3d_banner(nb)
    if cells: changed.append(f"Open3D banner in the outputs of cell{'s' if len(cells) > 1 else ''} {', '.join(cells)}")
    return changed


def main(paths=None, check=False) -> int:
    from execnb.nbio import nb2str
    info, todo = language_info(), []
    for p in notebooks(paths):
        try: nb = json.loads(p.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            print(f'{p}: not a readable notebook ({type(e).__name__}: {e}); fix or remove it', file=sys.stderr)
            return 2
        changed = tidy(nb, info)
        if not changed: continue
        name = p.resolve().relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p
        todo.append(f'{name}: {"; ".join(changed)}')
        if not check: p.write_text(nb2str(nb), encoding='utf-8')
    for line in todo: print(('needs ' if check else 'tidied ') + line)
    return 1 if check and todo else 0


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('notebooks', nargs='*', help='notebooks to tidy (default: every notebook under nbs/)')
    ap.add_argument('--check', action='store_true', help='change nothing; exit 1 if a notebook needs tidying')
    a = ap.parse_args()
    sys.exit(main(a.notebooks, a.check))
