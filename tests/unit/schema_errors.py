"""The one helper the schema tests share."""


def errors(cls, params, model=None):
    """(parameter, message) of every error: the schema's first, then the model's shapes (check_model)."""
    p, errs = cls.schema.errors(params)
    if not errs and model is not None:
        errs = cls().check_model(params, model)
    return [(e.param, e.message) for e in errs]
