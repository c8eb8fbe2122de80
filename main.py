from dify_plugin import DifyPluginEnv, Plugin

from models import lifecycle, log_bridge, routes
from models.common import install_metrics, install_stats_signal

# Generation calls can legitimately stream for minutes on a CPU; the engine bounds each one itself
# (max_tokens, max_generation_seconds), so the SDK's own request timeout is raised to the daemon's 600 s.
plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))
log_bridge.install()
lifecycle.install()
routes.install(plugin)
install_stats_signal()
install_metrics()

if __name__ == "__main__":
    plugin.run()
