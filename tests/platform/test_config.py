from dataclasses import dataclass, field

import pytest

from mlsd.platform.config import override_sections
from mlsd.platform.errors import InputError


@dataclass(frozen=True)
class Service:
    port: int = 8000
    pinned: tuple[int, ...] = ()


@dataclass(frozen=True)
class Config:
    service: Service = field(default_factory=Service)


def test_overrides_only_the_given_settings():
    config = override_sections(Config(), {"service": {"port": 9000}})
    assert config == Config(service=Service(port=9000))
    assert override_sections(Config(), None) == Config()


def test_convert_normalises_a_section():
    config = override_sections(
        Config(),
        {"service": {"pinned": [3, 1]}},
        convert={"service": lambda v: {**v, "pinned": tuple(v["pinned"])}},
    )
    assert config.service.pinned == (3, 1)


@pytest.mark.parametrize(
    ("data", "field_name"),
    [
        ({"servic": {"port": 1}}, "config"),
        ({"service": {"prot": 1}}, "config.service.prot"),
        ({"service": 5}, "config.service"),
    ],
)
def test_unknown_or_malformed_keys_name_the_path(data, field_name):
    with pytest.raises(InputError) as err:
        override_sections(Config(), data)
    assert err.value.field == field_name
