"""Train labels under review: the audit, the fixes a person accepts, pseudo-labels of eval photos."""
