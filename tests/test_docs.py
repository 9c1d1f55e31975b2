"""Generated documentation stays in step with the code that generates it."""

import pytest

from mpsim.experiment import docgen


@pytest.mark.parametrize("name", sorted(docgen.GENERATED))
def test_generated_doc_is_current(name):
    committed = (docgen.DOCS / name).read_text()
    assert committed == docgen.GENERATED[name](), (
        f"docs/{name} is stale: run `python -m mpsim.experiment.docgen` and commit the result")


def test_state_diagrams_cover_every_state():
    text = docgen.state_diagrams_markdown()
    from mpsim.proto import convert, mptcp, tcp

    for state in [*tcp.TcpState, *mptcp.MptcpState, *convert.SessionState]:
        assert f"{state.name} -->" in text or f"--> {state.name}" in text, state
