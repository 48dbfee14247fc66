// Drives the captioner web page in Debian's headless chromium with playwright-core.
// Usage: node drive.mjs '<json config>'  (called by test_web_page.py; prints one JSON report).
// Config: {baseUrl, imagePath, imageUrl, forbiddenUrl, screenshotDir, chromium}
import { chromium } from "playwright-core";
import path from "node:path";

const config = JSON.parse(process.argv[2]);
const report = { consoleErrors: [], steps: {} };
const browser = await chromium.launch({
  executablePath: config.chromium || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.setDefaultTimeout(60_000);
  page.on("console", (msg) => {
    // A refused fetch logs "Failed to load resource: ... 403"; that is the expected error path.
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
      report.consoleErrors.push(msg.text());
    }
  });
  page.on("pageerror", (err) => report.consoleErrors.push(String(err)));

  await page.goto(config.baseUrl + "/");
  report.title = await page.title();
  report.unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((el) => el.labels.length === 0).map((el) => el.id || el.name));
  report.externalAssets = await page.evaluate(() =>
    [...document.querySelectorAll("script[src], link[href], img[src]")]
      .map((el) => el.src || el.href).filter((src) => src && !src.startsWith(location.origin)));

  // Keyboard: the first Tab stop is the file chooser.
  await page.keyboard.press("Tab");
  report.firstTabStop = await page.evaluate(() => document.activeElement.id);

  // 1. Upload a file, submit with the keyboard.
  await page.setInputFiles("#file", config.imagePath);
  await page.focus("#submit");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#result:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Caption:"));
  report.steps.upload = await page.evaluate(() => ({
    caption: document.querySelector("#caption").textContent,
    alt: document.querySelector("#preview").alt,
    imageLoaded: document.querySelector("#preview").naturalWidth > 0,
    nbest: [...document.querySelectorAll("#nbest li")].map((li) => li.textContent),
    timings: [...document.querySelectorAll("#timings tr")].map((tr) => tr.textContent),
    meta: document.querySelector("#meta").textContent,
    errorHidden: document.querySelector("#error").hidden,
  }));
  await page.screenshot({ path: path.join(config.screenshotDir, "upload.png"), fullPage: true });

  // 2. A URL (allow-listed local server) with greedy decoding.
  await page.fill("#url", config.imageUrl);
  await page.selectOption("#beam", "1");
  await page.evaluate(() => { document.querySelector("#status").textContent = ""; });
  await page.click("#submit");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Caption:"));
  await page.waitForFunction(() => document.querySelector("#preview").complete);
  report.steps.url = await page.evaluate(() => ({
    caption: document.querySelector("#caption").textContent,
    src: document.querySelector("#preview").src,
    imageLoaded: document.querySelector("#preview").naturalWidth > 0,
    nbest: [...document.querySelectorAll("#nbest li")].map((li) => li.textContent),
  }));

  // 3. A forbidden URL: the error detail and code are shown.
  await page.fill("#url", config.forbiddenUrl);
  await page.click("#submit");
  await page.waitForSelector("#error:not([hidden])");
  report.steps.forbidden = await page.evaluate(() => ({
    error: document.querySelector("#error").textContent,
    role: document.querySelector("#error").getAttribute("role"),
  }));
  await page.screenshot({ path: path.join(config.screenshotDir, "error.png"), fullPage: true });
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + "\n");
