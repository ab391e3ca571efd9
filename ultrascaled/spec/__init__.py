"""The fleet spec: YAML loaded into typed, frozen sections.

Every key is declared once, as a dataclass field whose metadata carries its help text and
bounds; validation, defaults and docs/configuration.md all come from these declarations.
Errors name the key path and the YAML line, and all of them are reported at once:

    instances.base_port (line 7): must be 1024..65535, got 80

The layer is pure: it reads a file when asked to and touches nothing else (the host checks of
`ultrascaled --check` are effects/host_checks.py). A spec file is read defensively (a regular
UTF-8 file of at most 1 MiB; YAML composed from parser events with caps on aliases, values and
nesting; plain tags only): whatever it holds, loading returns a Spec or raises SpecError.

The modules, in the order a spec goes through them: schema (the declarations), nginx (the nginx
section), yaml_reader, validate, budget, workers (worker classes), envfile (app.env_file), loader, errors; reference
(the docs table). This face re-exports what the rest of the package reads.
"""
from ultrascaled.spec.errors import SpecError
from ultrascaled.spec.loader import load_spec, parse_spec, read_spec_file, shown_spec
from ultrascaled.spec.reference import iter_settings, reference_markdown
from ultrascaled.spec.schema import (MB, AlertsSection, ApiSection, AppSection, AutoscaleSection,
                                     DashboardSection, DeploySection, GunicornSection,
                                     HealthSection, InstancesSection, LogsSection, MemorySection,
                                     MongoSection, PathsSection, RestartSection, Spec, setting)
from ultrascaled.spec.validate import budget_errors
from ultrascaled.spec.yaml_reader import MAX_SPEC_BYTES

__all__ = ["MB", "MAX_SPEC_BYTES", "AlertsSection", "ApiSection", "AppSection", "AutoscaleSection",
           "DashboardSection", "DeploySection", "GunicornSection", "HealthSection",
           "InstancesSection", "LogsSection", "MemorySection", "MongoSection", "PathsSection",
           "RestartSection", "Spec", "SpecError", "budget_errors", "iter_settings", "load_spec",
           "parse_spec", "read_spec_file", "reference_markdown", "setting", "shown_spec"]
