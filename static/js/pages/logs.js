import { logPanel } from "../logpanel.js";
import { split } from "../split.js";

export function logsPage(container) {
  const proxy = logPanel("proxy", "Proxy logs", "proxy");
  const upstream = logPanel("upstream", "Upstream logs", "upstream", true);
  container.append(split("logs", proxy, upstream));
  return () => {
    proxy.cleanup();
    upstream.cleanup();
  };
}
