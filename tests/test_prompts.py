"""Prompt files (fifo.prompts): formats, validation errors that name file and line, safe_name."""

from __future__ import annotations

from pathlib import Path

import pytest

from fifo.prompts import PromptFileError, Scene, parse_prompt_file, safe_name
from tests.conftest import write_png


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def png(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    return write_png(path, size)


# ----------------------------------------------------------------------------- text modes
def test_text_prompts_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.txt",
        "# a comment\n\na red fox; in snow\n   \n  # indented comment\n  a boat, at dusk  \n\n",
    )
    jobs = parse_prompt_file(f, image_mode=False)
    assert [(j.prompt, j.line) for j in jobs] == [("a red fox; in snow", 3), ("a boat, at dusk", 6)]
    assert not any(j.is_story or j.image for j in jobs)


def test_windows_line_endings_and_utf8(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_bytes("un café\r\n# x\r\n雪の中の狐\r\n".encode())
    assert [j.prompt for j in parse_prompt_file(f, image_mode=False)] == ["un café", "雪の中の狐"]


def test_story_blocks(tmp_path: Path) -> None:
    f = write(
        tmp_path / "s.txt",
        "a plain prompt\n"
        "3|a cat sleeps\n"
        " 2 | the cat wakes up \n"
        "# a comment does not end a story\n"
        "4|the cat runs\n"
        "\n"
        "5|a dog\n"
        "another plain prompt\n",
    )
    jobs = parse_prompt_file(f, image_mode=False)
    assert [j.prompt for j in jobs] == ["a plain prompt", "a cat sleeps", "a dog", "another plain prompt"]
    story = jobs[1]
    assert story.is_story and story.line == 2
    assert story.scenes == (Scene(3, "a cat sleeps"), Scene(2, "the cat wakes up"), Scene(4, "the cat runs"))
    assert story.story_length == 9
    assert jobs[2].scenes == (Scene(5, "a dog"),) and jobs[2].line == 7
    assert not jobs[3].is_story


def test_story_with_zero_frames(tmp_path: Path) -> None:
    f = write(tmp_path / "s.txt", "2|a cat\n0|a dog\n")
    with pytest.raises(PromptFileError, match=r"s\.txt:2.*at least 1 frame"):
        parse_prompt_file(f, image_mode=False)


def test_story_with_empty_prompt(tmp_path: Path) -> None:
    f = write(tmp_path / "s.txt", "\n3|   \n")
    with pytest.raises(PromptFileError, match=r"s\.txt:2.*empty prompt"):
        parse_prompt_file(f, image_mode=False)


# ----------------------------------------------------------------------------- i2v
def test_i2v_lines(tmp_path: Path) -> None:
    rel = png(tmp_path / "prompts" / "images" / "a.png")
    absolute = png(tmp_path / "elsewhere" / "b.png")
    f = write(
        tmp_path / "prompts" / "i2v.txt",
        "# images are relative to this file\n"
        "images/a.png;a lake; calm, at sunset\n"
        "\n"
        f"  {absolute} ;  a ball  \n",
    )
    jobs = parse_prompt_file(f, image_mode=True)
    assert len(jobs) == 2
    assert jobs[0].image == rel and jobs[0].image.is_absolute() is rel.is_absolute()
    assert jobs[0].prompt == "a lake; calm, at sunset"  # split on the first ';' only
    assert jobs[0].line == 2
    assert jobs[1].image == absolute and jobs[1].prompt == "a ball" and jobs[1].line == 4


def test_i2v_relative_to_the_prompt_file_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    png(tmp_path / "p" / "img.png")
    write(tmp_path / "p" / "list.txt", "img.png;a prompt\n")
    monkeypatch.chdir(tmp_path)  # img.png does not exist here
    (job,) = parse_prompt_file(Path("p/list.txt"), image_mode=True)
    assert job.image.resolve() == (tmp_path / "p" / "img.png").resolve()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("# c\nimages/a.png a lake without a separator\n", 2, "no ';'"),
        (";a prompt\n", 1, "non-empty"),
        ("images/a.png;   \n", 1, "non-empty"),
        ("images/a.png;ok\n\nimages/missing.png;a lake\n", 3, "image not found"),
        ("images/notimage.png;a lake\n", 1, "cannot read image"),
        ("images/truncated.png;a lake\n", 1, "cannot read image"),
        ("images/badcrc.png;a lake\n", 1, "cannot read image"),
        # An i2v story names its image on its first scene (DynamiCrafter conditions every frame on it).
        ("images/a.png;ok\n3|a story line\n", 2, "an i2v story starts with 'frames|image_path;prompt'"),
        ("images;a folder is not an image\n", 1, "image not found"),
    ],
    ids=[
        "no-separator",
        "empty-path",
        "empty-prompt",
        "missing",
        "text-file",
        "truncated",
        "bad-crc",
        "story",
        "dir",
    ],
)
def test_i2v_errors_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    good = png(tmp_path / "images" / "a.png", (64, 64))
    (tmp_path / "images" / "notimage.png").write_text("this is not a PNG")
    data = good.read_bytes()
    (tmp_path / "images" / "truncated.png").write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[100] ^= 0xFF  # inside the first IDAT chunk: Pillow's verify() raises SyntaxError here
    (tmp_path / "images" / "badcrc.png").write_bytes(bytes(damaged))
    f = write(tmp_path / "i2v.txt", text)
    with pytest.raises(PromptFileError) as info:
        parse_prompt_file(f, image_mode=True)
    message = str(info.value)
    assert f"{f}:{line}:" in message
    assert words in message


# ----------------------------------------------------------------------------- file errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="not found") as info:
        parse_prompt_file(tmp_path / "nope.txt", image_mode=False)
    assert "nope.txt" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n  \n", "# only\n   # comments\n"])
@pytest.mark.parametrize("image_mode", [False, True])
def test_empty_file(tmp_path: Path, text: str, image_mode: bool) -> None:
    f = write(tmp_path / "empty.txt", text)
    with pytest.raises(PromptFileError, match="no prompts") as info:
        parse_prompt_file(f, image_mode=image_mode)
    assert str(f) in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(PromptFileError, match="cannot read prompt file"):
        parse_prompt_file(f, image_mode=False)


def test_prompt_file_error_is_a_value_error() -> None:
    assert issubclass(PromptFileError, ValueError)  # the CLI maps ValueError to exit code 2


# ----------------------------------------------------------------------------- safe_name
@pytest.mark.parametrize(
    "text",
    [
        "a red fox, high quality, 4K resolution.",
        "../../etc/passwd",
        "a/b\\c:d*e?f",
        "..",
        "",
        "   ",
        "雪の中の狐",
        "x" * 500,
        "a " * 300,
    ],
)
def test_safe_name_is_a_single_bounded_path_component(text: str) -> None:
    name = safe_name(text)
    assert name and len(name) <= 100
    assert "/" not in name and "\\" not in name
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert Path(name).name == name
    assert safe_name(text) == name  # stable


def test_safe_name_readable_and_stable() -> None:
    assert safe_name("a red fox, in snow") == "a_red_fox_in_snow"
    assert safe_name("x" * 500, max_length=40) == safe_name("x" * 500, max_length=40)
    assert len(safe_name("y" * 500, max_length=40)) == 40


def test_safe_name_distinct_for_long_prompts_with_a_shared_prefix() -> None:
    prefix = "a very long prompt about a fox running through fresh snow in a pine forest " * 3
    names = {safe_name(prefix + end) for end in ("at dawn", "at dusk", "at night", "")}
    assert len(names) == 4
    assert all(len(n) <= 100 for n in names)


def test_safe_name_distinct_for_prompts_without_latin_letters() -> None:
    assert safe_name("雪の中の狐") != safe_name("海辺の犬")


def test_prompts_that_clean_to_the_same_folder_get_distinct_folders(tmp_path) -> None:
    from fifo.prompts import parse_prompt_file

    path = tmp_path / "p.txt"
    path.write_text("a cat!\na cat?\na dog\na dog\n")
    jobs = parse_prompt_file(path, image_mode=False)
    folders = [j.folder_name for j in jobs]
    assert folders[0] != folders[1] and folders[0].startswith("a_cat_")
    assert folders[2] == folders[3] == "a_dog"  # the same prompt twice is the same video
    assert all("/" not in f for f in folders)
