# JupyterLab as `make lab` starts it: `jupyter lab --config=tools/jupyter/jupyter_lab_config.py`.
# tests/test_lab_browser.py starts it through `make lab` too, so what is set here is what is tested.
from pathlib import Path

c = get_config()  # noqa: F821 (traitlets provides it when it reads this file)

# open3d requires `dash`, which installs @plotly/dash-jupyterlab as a *source* extension: JupyterLab would
# need a rebuild (Node.js, minutes) to load it, so every start showed a "Build Recommended" dialog, and
# its Build button failed. sparse3d needs no rebuild: ipywidgets, anywidget and k3d ship prebuilt
# extensions. So the build check and the build button are off.
c.ServerApp.tornado_settings = {'page_config_data': {'buildCheck': False, 'buildAvailable': False}}

# Nothing asked from the web at start: no news feed, no update check, and no pop-up asking whether to fetch
# news (lab-settings/overrides.json sets those settings' defaults; a user's own settings still win).
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'
c.LabApp.app_settings_dir = str(Path(__file__).resolve().parent/'lab-settings')
