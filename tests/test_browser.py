"""The headless-browser harness in tests/browser.py must be able to fail: each check here
plants one fault and expects the harness to report it, and one clean page expects silence."""

import base64

from .browser import render_page, require_browser

# The smallest valid PNG (1x1), to show that data: images load and are not blocked.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d4944415478da63f8cfc0f01f0005000201a5b1d6a40000000049454e44ae426082"
    )
).decode()


def render(tmp_path, body, **kwargs):
    path = tmp_path / "page.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return render_page(path, **kwargs)


def test_uncaught_exception_is_a_page_error(tmp_path):
    require_browser()
    page = render(tmp_path, "<script>throw new Error('boom')</script>")
    assert page.page_errors and "boom" in page.page_errors[0]
    assert page.script_count == 1


def test_console_error_is_collected(tmp_path):
    require_browser()
    page = render(tmp_path, "<script>console.error('x')</script>")
    assert page.console_errors == ["x"]
    assert not page.page_errors


def test_remote_request_is_blocked_and_recorded(tmp_path):
    require_browser()
    page = render(tmp_path, '<img src="https://example.com/x.png">')
    assert "https://example.com/x.png" in page.blocked_requests
    assert page.broken_images == ["https://example.com/x.png"]


def test_executed_payload_sets_the_flag(tmp_path):
    require_browser()
    page = render(tmp_path, '<img src=x onerror="window.__kdmem_pwned=1">')
    assert page.window_flags == 1
    assert page.broken_images == ["x"]


def test_escaped_payload_is_only_text(tmp_path):
    require_browser()
    page = render(
        tmp_path,
        "<p>&lt;img src=x onerror=window.__kdmem_pwned=1&gt;</p><p>&lt;script&gt;alert(1)&lt;/script&gt;</p>",
    )
    assert "<img src=x onerror=" in page.text
    assert "<script>alert(1)</script>" in page.text
    assert page.window_flags is None
    assert page.dialogs == []
    assert page.script_count == 0 and page.broken_images == []


def test_dialog_is_dismissed_and_recorded(tmp_path):
    require_browser()
    page = render(tmp_path, "<script>alert('hi'); window.__kdmem_pwned = confirm('ok?')</script>")
    assert page.dialogs == ["alert: hi", "confirm: ok?"]
    assert page.window_flags is False  # dismissed, so confirm() returned false


def test_clean_page_and_screenshot(tmp_path):
    require_browser()
    shot = tmp_path / "page.png"
    page = render(
        tmp_path,
        f"<title>Report</title><section id='a'><h1>A</h1></section>"
        f"<section id='b'><img src='data:image/png;base64,{PIXEL}'></section>",
        screenshot=shot,
    )
    assert page.title == "Report"
    assert page.section_ids == ["a", "b"]
    assert page.text.strip() == "A"
    assert (page.console_errors, page.page_errors, page.dialogs, page.blocked_requests) == ([], [], [], [])
    assert page.broken_images == [] and page.script_count == 0 and page.window_flags is None
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
