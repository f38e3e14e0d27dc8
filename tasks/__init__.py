"""The work of every stage, one subpackage per track; flows/ wraps each stage in a Prefect flow."""
