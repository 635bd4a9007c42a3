"""Planted-defect factories, in one place: deliberately broken checkpoints the gates must catch.

``format_defects``: good and damaged files for the format gate (each ``plant_*`` breaks exactly one thing).
``render_defects``: small fp8 files written directly (independent of the converter) and the silent-wrong
files ComfyUI loads and renders without an error (the render gate must fail them).
"""
