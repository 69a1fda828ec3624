__version__ = "0.1.0"

# Not exported from a notebook (nbdev only keeps the version line above up to date): this runs before any
# module of the package imports open3d. open3d, imported in a Jupyter kernel, prints "Jupyter environment
# detected. Enabling Open3D WebVisualizer." and switches its windows to WebRTC; sparse3d opens no open3d
# window, and the banner would land in every notebook's saved outputs. A user who wants open3d's web
# visualizer sets OPEN3D_DISABLE_WEB_VISUALIZER=false before importing sparse3d.
import os as _os

_os.environ.setdefault('OPEN3D_DISABLE_WEB_VISUALIZER', 'true')
