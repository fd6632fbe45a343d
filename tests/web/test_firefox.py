"""The playground in Firefox: Debian's Firefox ESR, headless, over WebDriver BiDi. The same
page as in Chromium (tests/web/test_playground.py) loads its modules, asks the server for its
models, generates, shows the image forming from the job's event stream and the image itself."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess, running_server
from tests.web.firefox import Firefox, needs_firefox

pytestmark = needs_firefox

FORM = {
    "prompt": "a red circle on a blue background",
    "width": 128,
    "height": 128,
    "num_inference_steps": 120,  # long enough to see it form
    "seed": 7,
}
CARD = "document.querySelector('#jobs .job')"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The demo model, open (no key, loopback only)."""
    data = tmp_path_factory.mktemp("data")
    with running_server(data, [], {"SDSERVE_RATE_LIMIT": "none"}) as srv:
        yield srv


@pytest.fixture
def firefox() -> Iterator[Firefox]:
    browser = Firefox()
    try:
        yield browser
    finally:
        browser.close()


def test_generates_and_shows_the_image_forming_in_firefox(
    server: ServerProcess, firefox: Firefox
) -> None:
    firefox.goto(server.url + "/")
    firefox.wait_for("document.querySelector('#model').options.length > 0")
    assert "Firefox/" in firefox.evaluate("JSON.stringify(navigator.userAgent)")
    fields = json.dumps({name: str(value) for name, value in FORM.items()})
    firefox.evaluate(
        f"""JSON.stringify(Object.entries({fields}).map(([name, value]) => {{
            const input = document.getElementById(name);
            input.value = value;
            input.dispatchEvent(new Event('input', {{bubbles: true}}));
            input.dispatchEvent(new Event('change', {{bubbles: true}}));
            return name;
        }}))"""
    )
    firefox.evaluate("JSON.stringify(document.querySelector('#generate').click() ?? null)")
    firefox.wait_for(CARD)

    # While it runs: the progress bar moves and a preview (a JPEG from the event stream) shows.
    firefox.wait_for(
        f"{CARD}.querySelector('progress').value > 0"
        f" && !{CARD}.querySelector('.preview').hidden"
        f" && {CARD}.querySelector('.preview').src.startsWith('data:image/jpeg;base64,')"
        f" && {CARD}.querySelector('.preview').naturalWidth === 128 / 8"
    )

    firefox.wait_for(f"{CARD}.dataset.status === 'COMPLETED'")
    firefox.wait_for(
        f"{CARD}.querySelector('.image .picture')?.naturalWidth === 128"
        f" && {CARD}.querySelector('.params dd[data-param=\"Seed\"]')?.textContent === '7'"
    )
    assert firefox.evaluate(f"JSON.stringify({CARD}.querySelector('.preview').hidden)")
    # The image as Firefox decoded and shows it: a red disc on a blue background.
    colours = firefox.evaluate(
        f"""(() => {{
            const img = {CARD}.querySelector('.image .picture');
            const canvas = document.createElement('canvas');
            canvas.width = canvas.height = 128;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const share = (x0, y0, x1, y1, test) => {{
                const data = context.getImageData(x0, y0, x1 - x0, y1 - y0).data;
                let hits = 0;
                for (let i = 0; i < data.length; i += 4) {{
                    hits += test(data[i], data[i + 1], data[i + 2]);
                }}
                return hits / (data.length / 4);
            }};
            const red = (r, g, b) => r > 150 && g < 110 && b < 110;
            const blue = (r, g, b) => b > 150 && r < 110 && g < 150;
            return JSON.stringify({{
                centre_red: share(54, 54, 74, 74, red),
                top_blue: share(0, 0, 128, 8, blue),
            }});
        }})()"""
    )
    assert colours["centre_red"] > 0.8 and colours["top_blue"] > 0.8, colours
