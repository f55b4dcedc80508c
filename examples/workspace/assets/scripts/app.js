// Shopfront front end: talks to the backend's JSON handlers (backend/api/routing.py).
const API = "/api";

export async function request(method, path, body) {
  const response = await fetch(`${API}${path}`, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    const error = new Error(data.error?.message ?? `HTTP ${response.status}`);
    error.code = data.error?.code;
    error.field = data.error?.field;
    throw error;
  }
  return data;
}

export function formatMoney(cents, currency = "EUR") {
  return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-money]").forEach((node) => {
    node.textContent = formatMoney(Number(node.dataset.money), node.dataset.currency);
  });
});
