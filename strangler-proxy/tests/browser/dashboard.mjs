// Drives Debian's chromium through the admin dashboard of a running proxy. Started by
// strangler-proxy/tests/dashboard.rs, which starts the proxy and its upstreams and passes:
//   DASHBOARD_URL   the admin listener's `/`
//   ROUTES          JSON list of the route names the page must show
//   ROUTES_FILE     the routes.toml the proxy watches
//   WEIGHT_TEXT     a valid edit of it: route WEIGHT_ROUTE's weight becomes WEIGHT_VALUE
//   BAD_TEXT        an invalid edit, refused with an error at BAD_LINE
//   DIFF_ROUTE      a shadowed route whose service answers differently from the default
//   DIFF_TEXT       a value only the service's answer holds
//   SCREENSHOT      where to save the screenshot
//   EJECTED_SERVICE a service outlier detection has ejected
//   READS_ONLY_ROUTE a route at 100 % whose writes stay on the default
//   CHROMIUM        the browser binary
// Every wait is bounded; a failed expectation exits 1 with what was expected and what the page
// showed.
import { writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`dashboard.mjs: ${name} is not set (this script is run by cargo test -p strangler-proxy --test dashboard)`);
    process.exit(2);
  }
  return v;
};

const WAIT = { timeout: 20000 };
const routes = JSON.parse(env("ROUTES"));
const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failed = false;
const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`); });
page.on("request", (r) => {
  const url = new URL(r.url());
  if (url.protocol === "data:") return;
  if (url.origin !== new URL(env("DASHBOARD_URL")).origin) problems.push(`fetched from elsewhere: ${r.url()}`);
});

async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed = true;
    console.error(`FAIL ${name}: ${e.message.split("\n")[0]}`);
    const text = await page.locator("main").innerText().catch(() => "(no page)");
    console.error(`--- the page showed:\n${text.slice(0, 3000)}\n---`);
    throw e;
  }
}

try {
  await step("the page loads and renders every route", async () => {
    await page.goto(env("DASHBOARD_URL"));
    await page.waitForSelector('#conn[data-state="ok"]', WAIT);
    for (const name of routes) {
      await page.locator(`[data-route="${name}"]`).waitFor(WAIT);
      const head = await page.locator(`[data-route="${name}"] .head .name`).innerText();
      if (head !== name) throw new Error(`route card ${name} is titled ${head}`);
      // Its traffic chart is drawn.
      const paths = await page.locator(`[data-route="${name}"] svg.chart path`).count();
      if (paths < 3) throw new Error(`route ${name} has no traffic chart (${paths} paths)`);
    }
    const cards = await page.locator("[data-route]").count();
    if (cards !== routes.length) throw new Error(`${cards} route cards for ${routes.length} routes`);
  });

  await step("an ejected service shows its outlier state", async () => {
    const name = env("EJECTED_SERVICE");
    const badge = await page.locator(`[data-service="${name}"] .badge`).innerText();
    if (badge.toLowerCase() !== "ejected") throw new Error(`${name} shows ${badge}`);
  });

  await step("a route whose writes stay on the default is not shown as plain live", async () => {
    const reads = process.env.READS_ONLY_ROUTE;
    if (!reads) return;
    const stage = await page.locator(`[data-route="${reads}"] .badge`).first().getAttribute("data-stage");
    if (stage !== "live-reads") throw new Error(`stage badge of ${reads} is ${stage}`);
    const moved = await page.locator(`[data-moved="${reads}"]`).innerText();
    if (!moved.includes("writes stay on")) throw new Error(`methods moved of ${reads}: ${moved}`);
  });

  await step("the shadowed route charts its verdicts per bucket", async () => {
    const bars = await page.locator(`[data-route="${env("DIFF_ROUTE")}"] svg.verdicts rect.mismatch`).count();
    if (bars < 4) throw new Error(`${bars} mismatch bars for four buckets of mismatches`);
  });

  await step("a deliberate shadow difference appears in the diffs, side by side", async () => {
    const group = page.locator(`[data-diffs="${env("DIFF_ROUTE")}"] .diff-group`).first();
    await group.waitFor(WAIT);
    await page.waitForFunction(
      ([route, text]) => {
        const g = document.querySelector(`[data-diffs="${route}"] .diff-group td.s`);
        return g && [...document.querySelectorAll(`[data-diffs="${route}"] td.s`)].some((td) => td.textContent.includes(text));
      },
      [env("DIFF_ROUTE"), env("DIFF_TEXT")],
      WAIT,
    );
  });

  await step("a weight change in routes.toml shows without reloading the page", async () => {
    await page.evaluate(() => { window.__sameDocument = true; });
    const route = env("WEIGHT_ROUTE");
    const before = await page.locator(`[data-route="${route}"]`).getAttribute("data-weight");
    if (before === env("WEIGHT_VALUE")) throw new Error(`weight is already ${before}`);
    writeFileSync(env("ROUTES_FILE"), env("WEIGHT_TEXT"));
    await page.locator(`[data-route="${route}"][data-weight="${env("WEIGHT_VALUE")}"]`).waitFor(WAIT);
    const text = await page.locator(`[data-weight-text="${route}"]`).innerText();
    if (!text.startsWith(`${env("WEIGHT_VALUE")}%`)) throw new Error(`weight reads ${text}`);
    if (!(await page.evaluate(() => window.__sameDocument === true))) throw new Error("the page was reloaded");
  });

  await step("a refused reload shows its error with line and column", async () => {
    writeFileSync(env("ROUTES_FILE"), env("BAD_TEXT"));
    const banner = page.locator("#reload-banner");
    await banner.waitFor({ state: "visible", ...WAIT });
    const error = page.locator('tr[data-result="rejected"] .reload-error').first();
    await error.waitFor(WAIT);
    const text = await error.innerText();
    if (!text.includes(`line ${env("BAD_LINE")}, column`)) throw new Error(`the reload error reads: ${text}`);
    const bannerText = await banner.innerText();
    if (!bannerText.includes("refused")) throw new Error(`the banner reads: ${bannerText}`);
  });

  if (problems.length) {
    failed = true;
    console.error(`FAIL the page ran cleanly:\n${problems.join("\n")}`);
  }
} catch {
  failed = true;
} finally {
  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true }).catch((e) => console.error(`screenshot failed: ${e.message}`));
  console.log(`screenshot: ${env("SCREENSHOT")}`);
  await browser.close();
}
process.exit(failed ? 1 : 0);
