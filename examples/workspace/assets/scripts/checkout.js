// Checkout: invoice the placed order and capture the payment for its gross amount.
import { request } from "./app.js";

export async function checkout(order, method = "card") {
  const invoice = await request("POST", "/invoices/", { order_id: order.id });
  const payment = await request("POST", "/payments/", {
    invoice_id: invoice.id,
    amount_cents: invoice.gross_cents,
    method,
  });
  return { invoice, payment };
}
