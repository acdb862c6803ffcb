// Starts GraphiQL against this gateway's /graphql. The browser's own credentials are not sent: every
// request carries what the Headers tab holds. The editors open with the page's defaults (a query
// whose comment says how to authenticate, and a placeholder header), set by gateway/graphql/graphiql.py.
(function () {
  var defaults = JSON.parse(document.getElementById("graphiql-defaults").textContent);
  var fetcher = GraphiQL.createFetcher({ url: window.location.pathname });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaults.query,
      defaultHeaders: JSON.stringify(defaults.headers, null, 2),
      defaultEditorToolsVisibility: "headers",
    })
  );
})();
