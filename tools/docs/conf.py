# Sphinx configuration of the sparse3d documentation site. `make docs` (tools/build_docs.py) stages the
# nbdev-processed notebooks and runs sphinx-build with this folder as its configuration directory.
# Everything here works offline: no web fonts, no CDN scripts (ipywidgets' and MathJax's are switched off).
import configparser, os
from pathlib import Path

ROOT = Path(os.environ.get('SPARSE3D_ROOT', Path(__file__).resolve().parents[2]))
_ini = configparser.ConfigParser(interpolation=None)
_ini.read(ROOT/'settings.ini')
_s = _ini['DEFAULT']

project = _s['lib_name']
author = _s['author']
copyright = _s['copyright']
version = release = _s['version']
language = 'en'

extensions = ['myst_nb']
source_suffix = {'.ipynb': 'myst-nb', '.md': 'myst-nb'}
exclude_patterns = ['**.ipynb_checkpoints', '_build']
root_doc = 'index'

# --- MyST / MyST-NB: saved outputs only, never execute
nb_execution_mode = 'off'
nb_merge_streams = True
nb_ipywidgets_js = {}                 # the default loads require.js and the widget manager from CDNs
myst_enable_extensions = ['colon_fence', 'html_image']
myst_heading_anchors = 3
nb_render_markdown_format = 'myst'
suppress_warnings = ['myst.header', 'mystnb.unknown_mime_type', 'misc.highlighting_failure']

# --- HTML
html_theme = 'furo'
html_title = f'{project} {version}'
html_short_title = project
html_static_path = ['_static']
html_css_files = ['sparse3d.css']
# command-line flags stay as typed: no '--resume' turned into an en dash
smartquotes = False
html_favicon = '_static/favicon.svg'
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    'navigation_with_keys': True,
    'top_of_page_buttons': [],
    'footer_icons': [],
}
html_search_language = 'en'
html_permalinks_icon = '#'
pygments_style = 'friendly'
pygments_dark_style = 'monokai'
