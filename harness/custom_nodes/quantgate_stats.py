"""quantgate's server-side measurements (a ComfyUI custom node file; no nodes, one route).

``GET /quantgate/memory[?reset=1]`` answers the CUDA allocator's peak (torch.cuda.max_memory_allocated /
max_memory_reserved) of the ComfyUI process itself -- what /system_stats cannot say -- and with ``reset=1``
starts a new peak window (torch.cuda.reset_peak_memory_stats). The nightly GPU suite reads it around each
render to record peak VRAM per format.
"""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get("/quantgate/memory")
    async def _quantgate_memory(request):
        import torch
        out = {"cuda": bool(torch.cuda.is_available())}
        if out["cuda"]:
            out.update(device=torch.cuda.get_device_name(), max_allocated=int(torch.cuda.max_memory_allocated()),
                       max_reserved=int(torch.cuda.max_memory_reserved()), allocated=int(torch.cuda.memory_allocated()))
            if request.query.get("reset"):
                torch.cuda.reset_peak_memory_stats()
        return web.json_response(out)
except Exception as e:  # an older or headless ComfyUI without PromptServer.instance: no route, nothing breaks
    print(f"quantgate_stats: /quantgate/memory not available: {e}")
