"Shared pytest set-up: markers that match the notebooks' tst_flags (slow, browser, cuda)."
import pytest

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than a few seconds; run by `make test-all`')
    config.addinivalue_line('markers', 'browser: drives headless Chromium; run by `make test-all`')
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU')

def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='no CUDA GPU on this machine')
    for item in items:
        if 'cuda' in item.keywords: item.add_marker(skip)
