"""Real-browser tests of the chat page: Debian's chromium driven headless through chromedriver (Selenium), against
a local runtime of its own (the AWS endpoint served on a free port, so the page's presigned PUT reaches S3)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="package")
def browser_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from shardrag import services
    from shardrag_local.emulator import Endpoint
    from shardrag_local.runtime import LocalRuntime

    data_dir = tmp_path_factory.mktemp("shardrag-browser")
    previous = {k: os.environ.get(k) for k in ("SHARDRAG_SETTINGS", "SHARDRAG_DATA_DIR")}
    os.environ["SHARDRAG_SETTINGS"] = json.dumps({"store": {"shard_count": 4}})
    os.environ["SHARDRAG_DATA_DIR"] = str(data_dir)
    services.reset_caches()
    runtime = LocalRuntime(aws_endpoint=Endpoint(port=_free_port()))
    runtime.start()
    runtime.ensure_sample_corpus()
    try:
        yield runtime
    finally:
        runtime.stop()
        services.reset_caches()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="package")
def page_url(browser_runtime: Any) -> Iterator[str]:
    from shardrag_local.api_server import ApiServer

    server = ApiServer(browser_runtime, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="package")
def driver() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (`make tools` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield browser
    finally:
        browser.quit()
