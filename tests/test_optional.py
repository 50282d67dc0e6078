"""privdl._optional.require: a missing extra names the pip install that fixes it."""

import pytest

from privdl._optional import require
from privdl.errors import MissingDependencyError


def test_require_imports_or_names_the_extra():
    assert require("json", "dev").dumps([1]) == "[1]"
    with pytest.raises(MissingDependencyError, match=r"pip install 'privdl\[he\]'") as err:
        require("privdl_no_such_module", "he")
    assert isinstance(err.value, ImportError)
