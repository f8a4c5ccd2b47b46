"""tools/build_corpus.py and tools/corpus_text.py: text out of documentation formats, the
filters, and the one-line error when neither .deb files nor the package registry are there."""
import os
import stat

from tools import build_corpus
from tools.corpus_text import html_text, looks_like_prose, pod_text, roff_text, tidy

MAN = r""".\" Copyright notice, a comment
.TH LS 1 2023 "GNU" "User Commands"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
List information about the \fBFILE\fRs (the current directory by default).
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
"""


def test_roff_keeps_the_words_and_drops_requests_and_escapes():
    text = roff_text(MAN)
    assert "ls - list directory contents" in text
    assert "List information about the FILEs (the current directory by default)." in text
    assert "-a, --all" in text and "DESCRIPTION" in text
    assert "\\f" not in text and ".TH" not in text and "Copyright notice" not in text


def test_pod_html_and_rst():
    pod = "=head1 NAME\n\nperlfunc - B<Perl> builtin I<functions>, see L<perlsyn|perlsyn>\n\n=cut\n"
    assert pod_text(pod) == "NAME\n\nperlfunc - Perl builtin functions, see perlsyn"
    page = ("<html><head><title>t</title><script>var x = 1;</script></head><body><h1>Indexes</h1>"
            "<p>An index is a &quot;fast&quot; path.</p><style>p {}</style></body></html>")
    assert html_text(page) == 'Indexes\n\nAn index is a "fast" path.'
    assert tidy("Title\n=====\n\n\n\nBody  \n") == "Title\n\nBody"


def test_prose_filter_drops_short_translated_and_tabular_files():
    prose = "The scheduler picks the next task to run on each CPU. " * 10
    assert looks_like_prose(prose)
    assert not looks_like_prose(prose[:150])
    assert not looks_like_prose("调度器为每个处理器选择下一个要运行的任务。" * 30)
    assert not looks_like_prose("0x00 0x1f 0x2e 0x3d | 12 34 56 78 |\n" * 30)


def test_no_registry_and_no_debs_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """apt cannot reach Debian's package registry: the tool stops before unpacking anything,
    with one line that names the way out (--deb-dir)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt-cache"):
        path = bin_dir / tool
        path.write_text("#!/bin/sh\necho \"E: Failed to fetch: Temporary failure resolving 'registry'\" >&2\n"
                        "exit 100\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert build_corpus.main(["--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("build_corpus: error:") and "--deb-dir" in err[0]
    assert not os.path.exists(tmp_path / "out" / "corpus.json")
