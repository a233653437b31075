"""What a job is, checked without torch: the job spec, reward specs, graders, dataset formats, errors.

Everything here imports neither torch nor transformers (nor anything of the service), so the API
may import it; `tests/unit/trainers/spec` holds that boundary for every module of this package.
"""
