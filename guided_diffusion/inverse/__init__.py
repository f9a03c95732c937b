"""Inverse problems with ADM diffusions: linear degradations, DPS posterior sampling (PAG / SAG guidable),
restoration metrics."""

from .dps import DPS, dps_sample_loop, dps_step, measurement_residual
from .operators import OPERATOR_NAMES, LinearOperator, create_operator, default_params

__all__ = ["DPS", "OPERATOR_NAMES", "LinearOperator", "create_operator", "default_params", "dps_sample_loop",
           "dps_step", "measurement_residual"]
