import os
import shutil
import sys
from pathlib import Path

# One torch thread per test process: the tests' models are tiny, so two pytest-xdist workers (-n 2) fill two cores
# where one process's two threads mostly wait on each other. Set before anything imports torch; the CLIs the tests
# start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo_corpus import make_demo_corpus  # noqa: E402
from preprocess import preprocess  # noqa: E402

TEXT_DIM = 16  # small tf-idf embeddings keep the tests fast


@pytest.fixture(scope="session")
def raw_demo(tmp_path_factory) -> Path:
    """A small demo corpus (20 sessions, one 8-turn dialogue each), never modified by tests."""
    return make_demo_corpus(tmp_path_factory.mktemp("raw") / "KEMDy19", seed=1, n_sessions=20, n_scripts=1,
                            n_impros=0, n_turns=8)


@pytest.fixture(scope="session")
def demo_dir(raw_demo, tmp_path_factory) -> Path:
    """The small demo corpus, preprocessed with the offline tf-idf encoder."""
    data_dir = tmp_path_factory.mktemp("prep") / "KEMDy19"
    shutil.copytree(raw_demo, data_dir)
    preprocess(data_dir, "tfidf", TEXT_DIM)
    return data_dir


@pytest.fixture
def corpus_copy(raw_demo, tmp_path) -> Path:
    """A private copy of the raw demo corpus that a test may break."""
    return Path(shutil.copytree(raw_demo, tmp_path / "KEMDy19"))
