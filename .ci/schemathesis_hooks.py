"""Checks of .ci/schemathesis beyond schemathesis's own (loaded through SCHEMATHESIS_HOOKS)."""
import schemathesis


@schemathesis.check
def trigger_schema_agrees(ctx, response, case):
    """A trigger the OpenAPI document calls valid is never refused by the trigger schema: its
    422s may only come from the registry or the job folder (the problem says `check: schema`
    when the schema refused it)."""
    if case.operation.method.upper() != "POST" or case.operation.path != "/agents/trigger":
        return None
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    problem = response.json()
    if problem.get("check") == "schema":
        raise AssertionError(
            f"a schema-valid trigger was refused by trigger-request.json: {problem.get('errors')}"
        )
    return None
